// Types of chatd-client/react.

import type { AckFrame, ChatClient, ChatClientOptions, ChatError, ConnectionStateName, MessageFrame, RoomId } from './index.js';

export declare const HOOK_PAGE: number;

export interface UseChatResult {
  /** The room's messages, oldest first, each once (history page on join, then live and replayed ones); a message an operator deleted (`message_deleted`) is dropped. */
  messages: MessageFrame[];
  isConnected: boolean;
  connectionState: ConnectionStateName;
  /** Queues while disconnected; resolves with the ack. */
  sendMessage(content: string): Promise<AckFrame> & { clientMsgId: string };
  /** Other users typing in the room now. */
  typingUsers: { userId: string; username: string }[];
  /** Call on every keystroke (`true`) and when the field is cleared (`false`); throttled. */
  setTyping(isTyping?: boolean): boolean;
  /** User ids online in the room, sorted. */
  onlineUsers: string[];
  /** Loads the page before the oldest message; resolves with how many came. */
  loadOlder(): Promise<number>;
  /** Whether older messages may exist. */
  hasMore: boolean;
  /** The last refusal: authentication, a request refused, or a message not sent. */
  error: ChatError | null;
  /** The underlying client (null before the first effect ran). */
  client: ChatClient | null;
}

export declare function useChat(
  token: string | (() => string | Promise<string>),
  roomId?: RoomId,
  options?: Omit<ChatClientOptions, 'token' | 'roomId' | 'rooms'>,
): UseChatResult;
