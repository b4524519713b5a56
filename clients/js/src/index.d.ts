// Types of chatd-client. The frame types follow the wire contract
// (PROTOCOL.md sections 1-4) field for field; a test compares them with the
// server's OpenAPI document. Servers may add fields: clients ignore them.

// ---- identifiers --------------------------------------------------------

/** A message id: a ULID, 26 characters; ids compare as strings in the order a room's messages were accepted. */
export type MessageId = string;
/** A room id: 1 to 128 of letters, digits, `_`, `-`, `.`, `:`. */
export type RoomId = string;

// ---- client to server frames (section 3) -----------------------------------------

/** Post a chat message. */
export interface ClientMessageFrame {
  type: 'message';
  /** Defaults to the connection's initial room. */
  roomId?: RoomId;
  content: string;
  /** Informational only; the server stamps its own time. */
  timestamp?: string;
  /** A repeat of the same (user, clientMsgId) within 5 minutes is not stored again; the sender gets the original id in an `ack`. */
  clientMsgId?: string;
}

/** Join a room; with `since`, first the stored messages newer than that id (at most 1,000), then live ones. */
export interface ClientJoinRoomFrame {
  type: 'join_room';
  roomId: RoomId;
  since?: MessageId;
}

/** Leave a room; answered with `room_left`. */
export interface ClientLeaveRoomFrame {
  type: 'leave_room';
  roomId: RoomId;
}

/** Start or stop the typing indicator. */
export interface ClientTypingFrame {
  type: 'typing';
  /** Defaults to the connection's initial room. */
  roomId?: RoomId;
  isTyping: boolean;
}

/** Ask for stored messages; answered with a `history` frame. */
export interface ClientHistoryFrame {
  type: 'history';
  roomId: RoomId;
  before?: MessageId;
  after?: MessageId;
  /** 50 when absent, at most 200. */
  limit?: number;
}

/** Application-level ping; answered with `pong`. */
export interface ClientPingFrame {
  type: 'ping';
}

/** A newer token for this connection (before the current one's `exp` plus the server's grace); answered with `refreshed` or an `invalid_token` error. */
export interface ClientRefreshFrame {
  type: 'refresh';
  /** The new JWT, of the same user. */
  token: string;
}

export type ClientFrame =
  | ClientMessageFrame
  | ClientJoinRoomFrame
  | ClientLeaveRoomFrame
  | ClientTypingFrame
  | ClientHistoryFrame
  | ClientPingFrame
  | ClientRefreshFrame;

// ---- server to client frames (section 4) -----------------------------------------

/** A chat message, delivered to every member of the room (the sender included). */
export interface MessageFrame {
  type: 'message';
  messageId: MessageId;
  userId: string;
  username: string;
  roomId: RoomId;
  content: string;
  /** Server time, ISO 8601 UTC with milliseconds. */
  timestamp: string;
}

/** Acknowledgement of a message sent with a `clientMsgId`. */
export interface AckFrame {
  type: 'ack';
  clientMsgId: string;
  messageId: MessageId;
  roomId: RoomId;
}

export type PresenceStatus = 'online' | 'offline';

/** A user's first connection opened, or their last one closed. */
export interface PresenceFrame {
  type: 'presence';
  userId: string;
  status: PresenceStatus;
  roomId: RoomId;
}

/** Answer to a join (and the first frame of every connection). */
export interface RoomJoinedFrame {
  type: 'room_joined';
  roomId: RoomId;
  /** Distinct users in the room right after the join. */
  memberCount: number;
  /**
   * Only on a join with `since`: true when the replay that follows holds every
   * message after `since`; false when it does not (the client then pages the
   * rest with `history` and reports it with a `recovery` event).
   */
  recovered?: boolean;
}

/** Answer to `leave_room`. */
export interface RoomLeftFrame {
  type: 'room_left';
  roomId: RoomId;
}

/** Another member started or stopped typing. */
export interface TypingIndicatorFrame {
  type: 'typing_indicator';
  userId: string;
  roomId: RoomId;
  isTyping: boolean;
  /** Display name; chatd sends it, the contract does not require it. */
  username?: string;
}

/** An operator deleted a message of the room from its history: drop it from view. */
export interface MessageDeletedFrame {
  type: 'message_deleted';
  roomId: RoomId;
  messageId: string;
}

/** Answer to a `history` frame: stored messages, oldest first. */
export interface HistoryFrame {
  type: 'history';
  roomId: RoomId;
  messages: MessageFrame[];
  /** True when the page was cut short of its `limit` to fit the connection's outbound budget: ask for the next one. */
  more?: boolean;
}

/** Answer to `ping`. */
export interface PongFrame {
  type: 'pong';
}

/** Answer to `refresh`: the connection now expires with the new token. */
export interface RefreshedFrame {
  type: 'refreshed';
  /** The new token's `exp` (Unix seconds); null: the connection no longer expires. */
  exp: number | null;
}

export type ErrorCode =
  | 'invalid_message'
  | 'not_in_room'
  | 'message_too_long'
  | 'message_blocked'
  | 'rate_limited'
  | 'room_limit'
  | 'unavailable'
  | 'internal'
  /** A `refresh` with a bad, expired or another user's token. */
  | 'invalid_token'
  /** A `message` from a user an operator banned. */
  | 'forbidden';

/** A refusal or failure. */
export interface ErrorFrame {
  type: 'error';
  code: ErrorCode;
  message: string;
  /** With `rate_limited`. */
  retryAfterMs?: number;
}

export type ServerFrame =
  | MessageFrame
  | AckFrame
  | PresenceFrame
  | RoomJoinedFrame
  | RoomLeftFrame
  | TypingIndicatorFrame
  | HistoryFrame
  | PongFrame
  | RefreshedFrame
  | MessageDeletedFrame
  | ErrorFrame;

// ---- HTTP answers (section 1) ------------------------------------------------------

/** `GET /api/chats/rooms/{roomId}/presence`. */
export interface RoomPresence {
  roomId: RoomId;
  online: string[];
}

// ---- the client ------------------------------------------------------------------------

export type ConnectionStateName = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'auth_failed' | 'refused' | 'closed';

export declare const ConnectionState: Readonly<{
  IDLE: 'idle';
  CONNECTING: 'connecting';
  OPEN: 'open';
  RECONNECTING: 'reconnecting';
  AUTH_FAILED: 'auth_failed';
  REFUSED: 'refused';
  CLOSED: 'closed';
}>;

/** What `ChatClient` needs from a clock (tests pass a manual one). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

export interface ReconnectSettings {
  /** First backoff window, ms (500). */
  baseMs?: number;
  /** Largest backoff window, ms (30000); applied before the jitter. */
  capMs?: number;
  /** A connection open this long resets the attempt counter, ms (5000). */
  stableMs?: number;
  /** 1012: uniform delay range, ms ([1000, 5000]). */
  restartDelayMs?: readonly [number, number];
  /** 1013: the backoff continues from at least this attempt (3). */
  overloadAttempt?: number;
}

export interface TypingSettings {
  /** At most one `isTyping: true` per room this often, ms (2000). */
  intervalMs?: number;
  /** No keystroke for this long sends `isTyping: false`, ms (5000). */
  idleMs?: number;
  /** A received indicator expires after this long without a refresh, ms (6000). */
  ttlMs?: number;
}

/** A WebSocket constructor: the browser's, or `ws`'s in Node. */
export type WebSocketConstructor = new (url: string) => {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
};

export interface ChatClientOptions {
  /** A JWT, or a function returning one (called before every connection attempt); optional with `getToken`, whose first connection then uses it. */
  token?: string | (() => string | Promise<string>);
  /**
   * Returns a fresh JWT (or a promise of one). Called for the token of every
   * reconnect, and before the current token's `exp` to renew it on the open
   * connection (a `refresh` frame; see `refreshLeadMs`). Without it (and with
   * `token` a string), a connection closed 4001 (token expired) is not
   * reconnected: `auth_failed` is emitted instead.
   */
  getToken?: () => string | Promise<string>;
  /** Longest lead of the renewal before `exp`, ms (30000); a token with a shorter life is renewed with a fifth of its lifetime left. */
  refreshLeadMs?: number;
  /** `ws://host/ws` (http(s) URLs are converted); default: `/ws` on the page's host. */
  url?: string;
  /** The first room (default `lobby`); ignored when `rooms` is given. */
  roomId?: RoomId;
  /** Rooms to be in; the first is the connection's initial room. */
  rooms?: RoomId[];
  /** Default `globalThis.WebSocket`; in Node 20 pass `WebSocket` from the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** For the refusal probe and `presence()`; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Most messages waiting for an ack (100); beyond it `send` rejects with `queue_full`. */
  queueLimit?: number;
  reconnect?: ReconnectSettings;
  typing?: TypingSettings;
  /** No ack within this long gives the socket up; no history answer within this long of the last frame received rejects it with `timeout`, ms (10000). */
  ackTimeoutMs?: number;
  /** `ping` after this long, ms (25000); 0 turns the heartbeat off. */
  pingIntervalMs?: number;
  /** No `pong` within this long gives the socket up, ms (10000). */
  pongTimeoutMs?: number;
  clock?: Clock;
  /** Uniform in [0, 1): the backoff jitter. */
  random?: () => number;
}

export interface CloseEvent {
  code: number;
  reason: string;
  /** Whether the socket had opened (false: refused or no server). */
  wasOpen: boolean;
  reconnect: boolean;
  /** With `reconnect`: the wait before the next attempt, ms. */
  delayMs?: number;
  attempt?: number;
  kind?: 'restart' | 'overload' | 'backoff';
}

export interface RefusalEvent {
  /** HTTP status of the refusal (401 for a bad token), when known. */
  status?: number;
  /** The close code when the server closed an open connection for good: 4001 (token expired, no `getToken`) or 4003 (banned). */
  code?: 4001 | 4003;
  error: string;
}

export interface SendFailedEvent {
  clientMsgId: string;
  roomId: RoomId;
  content: string;
  code: string;
  message: string;
}

/** How the paging of a join's unreplayed messages (`recovered: false`) ended. */
export interface RecoveryEvent {
  roomId: RoomId;
  /** The `since` the gap starts after. */
  since: MessageId;
  /** True when every message of the gap was emitted as a `message` event. */
  complete: boolean;
  /** `history` pages asked for. */
  pages: number;
  /** Messages of the gap emitted. */
  messages: number;
  /** Unless complete: the last message id paged; the rest of the gap is after it. */
  after?: MessageId;
  /** Unless complete: why it stopped early (`unavailable`, `disconnected`, `timeout`), absent after the page cap. */
  code?: string;
}

export interface ChatClientEvents {
  message: MessageFrame;
  ack: AckFrame;
  presence: PresenceFrame;
  room_joined: RoomJoinedFrame;
  room_left: RoomLeftFrame;
  typing_indicator: TypingIndicatorFrame;
  /** An operator deleted a message of a joined room. */
  message_deleted: MessageDeletedFrame;
  history: HistoryFrame;
  pong: PongFrame;
  /** The server took the renewed token (see `getToken`). */
  refreshed: RefreshedFrame;
  error: ErrorFrame | { type: 'error'; code: 'connect_failed' | 'token_refresh_failed'; message: string };
  /** Every frame, before deduplication. */
  frame: ServerFrame;
  state: { state: ConnectionStateName; previous: ConnectionStateName };
  open: { url: string };
  close: CloseEvent;
  auth_failed: RefusalEvent;
  refused: RefusalEvent;
  send_failed: SendFailedEvent;
  recovery: RecoveryEvent;
}

/** A server error code, or one of the client's: `queue_full`, `closed`, `disconnected`, `timeout`, `invalid_room`, `auth_failed`, `http_error`, `unsupported`. */
export declare class ChatError extends Error {
  constructor(code: string, message: string, detail?: object);
  readonly code: ErrorCode | 'queue_full' | 'closed' | 'disconnected' | 'timeout' | 'invalid_room' | 'auth_failed' | 'refused' | 'http_error' | 'unsupported' | (string & {});
  clientMsgId?: string;
  roomId?: RoomId;
  retryAfterMs?: number;
  status?: number;
}

export declare class ChatClient {
  constructor(options: ChatClientOptions);
  readonly state: ConnectionStateName;
  readonly isConnected: boolean;
  readonly rooms: RoomId[];
  /** Messages waiting for an ack, the one in flight included. */
  readonly queued: number;
  readonly duplicatesDropped: number;
  /** When the scheduled reconnect fires (ms on the client's clock), or null. */
  readonly reconnectAt: number | null;
  /** `sub` (else `userId`) of the current token. */
  readonly userId: string | null;
  isJoined(roomId: RoomId): boolean;
  lastMessageId(roomId: RoomId): MessageId | undefined;
  on<K extends keyof ChatClientEvents>(event: K, handler: (event: ChatClientEvents[K]) => void): () => void;
  once<K extends keyof ChatClientEvents>(event: K, handler: (event: ChatClientEvents[K]) => void): () => void;
  off<K extends keyof ChatClientEvents>(event: K, handler: (event: ChatClientEvents[K]) => void): void;
  connect(): void;
  close(): void;
  /** Resolves with the ack; `clientMsgId` is set at once. */
  send(content: string, roomId?: RoomId): Promise<AckFrame> & { clientMsgId: string };
  join(roomId: RoomId): Promise<RoomJoinedFrame>;
  leave(roomId: RoomId): void;
  /** Throttled; returns whether a frame was sent. */
  typing(roomId?: RoomId, isTyping?: boolean): boolean;
  history(roomId: RoomId, page?: { before?: MessageId; after?: MessageId; limit?: number }): Promise<HistoryFrame>;
  presence(roomId: RoomId): Promise<RoomPresence>;
  ping(): boolean;
}

export declare const DEFAULT_ROOM: 'lobby';
export declare const MAX_FRAME_BYTES: number;
export declare const HISTORY_MAX_LIMIT: number;
/** Most `history` pages one gap recovery asks for. */
export declare const GAP_MAX_PAGES: number;
export declare function tokenClaims(token: string): Record<string, unknown> | null;
/** Longest lead of a token renewal before `exp`, ms (30000). */
export declare const REFRESH_LEAD_MS: number;
/** Share of a token's lifetime left when it is renewed, if that is sooner than the lead (0.2). */
export declare const REFRESH_LIFETIME_SHARE: number;
/** Wait before trying a refused or failed renewal again, ms (10000). */
export declare const REFRESH_RETRY_MS: number;

// ---- policy building blocks (pure, time passed in) -----------------------------------

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  ABNORMAL: 1006;
  TOO_BIG: 1009;
  SERVICE_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  NO_ANSWER: 4000;
  /** Token expired: reconnected only with a token from `getToken`. */
  TOKEN_EXPIRED: 4001;
  /** Disconnected by an operator: reconnected with the backoff. */
  DISCONNECTED: 4002;
  /** Banned: never reconnected automatically. */
  BANNED: 4003;
}>;
export declare const RECONNECT_DEFAULTS: Readonly<Required<ReconnectSettings>>;
export declare function backoffDelay(attempt: number, settings: { baseMs: number; capMs: number }, random?: () => number): number;
export declare function classifyRefusal(status: number | undefined): 'auth' | 'refused' | 'retry';
export declare class Reconnector {
  constructor(settings?: ReconnectSettings, random?: () => number);
  attempt: number;
  opened(now: number): void;
  reset(): void;
  closed(code: number, now: number): { delayMs: number; attempt: number; kind: 'restart' | 'overload' | 'backoff' };
}

export interface OutboxItem {
  clientMsgId: string;
  roomId: RoomId;
  content: string;
  timestamp: string;
  retryAt: number;
  retries: number;
  token?: unknown;
}
export declare const OUTBOX_LIMIT: number;
export declare const MESSAGE_ERROR_CODES: ReadonlySet<string>;
export declare class Outbox {
  constructor(options?: { limit?: number });
  readonly limit: number;
  readonly size: number;
  inflight: OutboxItem | null;
  push(item: Omit<OutboxItem, 'retryAt' | 'retries'> & Partial<OutboxItem>): boolean;
  next(ready: (roomId: RoomId) => boolean, now: number): OutboxItem | null;
  nextRetryAt(): number | null;
  ack(clientMsgId: string): OutboxItem | null;
  refuse(code: string, retryAfterMs: number | undefined, now: number): { item: OutboxItem; retry: boolean } | null;
  disconnected(): void;
  dropRoom(roomId: RoomId): OutboxItem[];
  drain(): OutboxItem[];
}

export declare const TYPING_DEFAULTS: Readonly<Required<TypingSettings>>;
export declare class TypingThrottle {
  constructor(settings?: TypingSettings);
  input(now: number): boolean;
  stop(): boolean;
  idleAt(): number | null;
  idle(now: number): boolean;
  reset(): void;
}
export declare class TypingTracker {
  constructor(settings?: { ttlMs?: number });
  update(frame: { roomId: RoomId; userId: string; username?: string; isTyping: boolean }, now: number): void;
  remove(roomId: RoomId, userId: string): void;
  typing(roomId: RoomId, now: number): { userId: string; username: string }[];
  nextExpiry(roomId: RoomId): number | null;
}

export declare class RoomCursors {
  accept(roomId: RoomId, messageId: MessageId): boolean;
  observe(roomId: RoomId, messageId: MessageId): void;
  since(roomId: RoomId): MessageId | undefined;
  forget(roomId: RoomId): void;
}
export declare function isMessageId(id: unknown): id is MessageId;
export declare function isRoomId(roomId: unknown): roomId is RoomId;
export declare function compareIds(a: MessageId, b: MessageId): number;
export declare function mergeMessages<M extends { messageId: MessageId }>(current: M[], incoming: M[]): M[];
