// Compiled (never run) by test/integration/types.test.js with `strict`:
// the declarations must accept real use and refuse wrong field names.

import { ChatClient, ChatError, backoffDelay, mergeMessages } from '../../src/index.js';
import type { ClientFrame, MessageFrame, ServerFrame } from '../../src/index.js';
import { useChat } from '../../src/react.js';

const client = new ChatClient({ url: 'ws://localhost:8000/ws', token: () => 'jwt', rooms: ['general'], queueLimit: 10 });
client.on('message', (m: MessageFrame) => m.messageId.length + m.content.length);
client.on('close', (e) => (e.reconnect ? e.delayMs : e.code));
client.on('state', ({ state }) => state === 'auth_failed');
client.on('recovery', (e) => (e.complete ? e.messages : (e.after ?? e.since).length + (e.code ?? '').length));
client.on('room_joined', (f) => f.recovered === false);
client.on('message_deleted', (d) => d.roomId.length + d.messageId.length);
client.on('history', (h) => (h.more ? h.messages.length : 0));
const renewing = new ChatClient({ url: 'ws://localhost:8000/ws', getToken: async () => 'jwt', refreshLeadMs: 10_000 });
renewing.on('refreshed', (f) => (f.exp === null ? 0 : f.exp));
renewing.on('auth_failed', (e) => e.code === 4001);
renewing.on('refused', (e) => e.code === 4003);
const sent = client.send('hello', 'general');
const id: string = sent.clientMsgId;
sent.then((ack) => ack.messageId).catch((e: unknown) => e instanceof ChatError && e.code === 'queue_full');
client.history('general', { before: '01HQZX3Y7K8M9N0P1Q2R3S4T5V', limit: 50 }).then((h) => h.messages[0]?.username);

function handle(frame: ServerFrame): string {
  switch (frame.type) {
    case 'message':
      return frame.username;
    case 'ack':
      return frame.clientMsgId;
    case 'presence':
      return frame.status;
    case 'room_joined':
      return String(frame.memberCount);
    case 'room_left':
      return frame.roomId;
    case 'typing_indicator':
      return String(frame.isTyping);
    case 'history':
      return String(frame.messages.length);
    case 'pong':
      return 'pong';
    case 'refreshed':
      return String(frame.exp ?? 'never');
    case 'message_deleted':
      return frame.messageId;
    case 'error':
      return frame.code === 'rate_limited' ? String(frame.retryAfterMs) : frame.message;
  }
}

const frames: ClientFrame[] = [
  { type: 'message', roomId: 'general', content: 'hi', clientMsgId: 'c-1' },
  { type: 'join_room', roomId: 'dev', since: '01HQZX3Y7K8M9N0P1Q2R3S4T5V' },
  { type: 'leave_room', roomId: 'dev' },
  { type: 'typing', isTyping: true },
  { type: 'history', roomId: 'general', after: '01HQZX3Y7K8M9N0P1Q2R3S4T5V' },
  { type: 'ping' },
  { type: 'refresh', token: 'jwt' },
];

// Wrong names and types are refused.
// @ts-expect-error: the field is roomId
const wrongField: ClientFrame = { type: 'join_room', room: 'dev' };
// @ts-expect-error: not an error code of the contract
const wrongCode: ServerFrame = { type: 'error', code: 'oops', message: '' };
// @ts-expect-error: isTyping is required
const missing: ClientFrame = { type: 'typing', roomId: 'general' };

const merged: MessageFrame[] = mergeMessages<MessageFrame>([], []);
const delay: number = backoffDelay(3, { baseMs: 500, capMs: 30_000 });

function Chat(): string {
  const { messages, isConnected, sendMessage, typingUsers, onlineUsers } = useChat('jwt', 'general');
  void sendMessage('hi').clientMsgId;
  return `${messages.length} ${isConnected} ${typingUsers.map((u) => u.username)} ${onlineUsers.join()}`;
}

export { id, handle, frames, wrongField, wrongCode, missing, merged, delay, Chat };
