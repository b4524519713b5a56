// chatd-client: the public entry point. Plain ES modules, no dependencies;
// browsers load them as they are (chatd serves them under /js/).

export {
  ChatClient,
  ChatError,
  ConnectionState,
  DEFAULT_ROOM,
  GAP_MAX_PAGES,
  HISTORY_MAX_LIMIT,
  MAX_FRAME_BYTES,
  REFRESH_LEAD_MS,
  REFRESH_LIFETIME_SHARE,
  REFRESH_RETRY_MS,
  tokenClaims,
} from './client.js';
export { CloseCode, RECONNECT_DEFAULTS, Reconnector, backoffDelay, classifyRefusal } from './reconnect.js';
export { MESSAGE_ERROR_CODES, OUTBOX_LIMIT, Outbox } from './outbox.js';
export { TYPING_DEFAULTS, TypingThrottle, TypingTracker } from './typing.js';
export { RoomCursors, compareIds, isMessageId, isRoomId, mergeMessages } from './messages.js';
