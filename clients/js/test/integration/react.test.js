// useChat in a real React tree (react-test-renderer) against chatd: history
// on mount, live messages, sendMessage, typing, online list, and the
// connection closed on unmount.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';

import { createElement } from 'react';
import TestRenderer from 'react-test-renderer';

import { ChatClient } from '../../src/client.js';
import { useChat } from '../../src/react.js';
import { SECRET, chatdBinary, getJson, mintToken, startServer, until } from '../helpers/server.js';
import { recordingSockets } from '../helpers/sockets.js';

const skip = chatdBinary() ? false : 'CHATD_BIN is not set to a chatd binary';

// Updates come from WebSocket events, outside act(): let React schedule them.
globalThis.IS_REACT_ACT_ENVIRONMENT = false;
// React 19 marks the test renderer deprecated (it still works); keep that
// one notice out of the test output and let every other error through.
const consoleError = console.error;
console.error = (...args) => {
  if (!String(args[0]).includes('react-test-renderer is deprecated')) consoleError(...args);
};

let server;
before(async () => {
  if (!skip) server = await startServer();
});
after(async () => {
  await server?.kill();
});

test('useChat: history, live messages, sendMessage, typing, presence, unmount', { skip }, async () => {
  const room = 'hook-room';
  const bob = new ChatClient({ url: server.wsUrl, token: mintToken('bob'), roomId: room, WebSocket: recordingSockets().Socket });
  bob.connect();
  const early = await bob.send('before the hook mounted', room);

  let chat;
  // The token must not change between renders (a new one would reconnect).
  const token = mintToken('alice', { name: 'Alice' });
  function Stable() {
    chat = useChat(token, room, { url: server.wsUrl, WebSocket: recordingSockets().Socket });
    return null;
  }
  const renderer = TestRenderer.create(createElement(Stable));
  await until(() => chat?.isConnected, 'isConnected');
  assert.equal(chat.connectionState, 'open');
  await until(() => chat.messages.length === 1, 'history loaded on join');
  assert.equal(chat.messages[0].messageId, early.messageId);
  await until(() => chat.onlineUsers.join() === 'alice,bob', `online list, got ${chat.onlineUsers}`);

  const fromBob = await bob.send('live from bob', room);
  await until(() => chat.messages.length === 2, 'live message');
  assert.equal(chat.messages[1].messageId, fromBob.messageId);

  const ack = await chat.sendMessage('from the hook');
  assert.equal(ack.roomId, room);
  await until(() => chat.messages.length === 3, 'own message echoed');
  assert.deepEqual(
    chat.messages.map((m) => m.content),
    ['before the hook mounted', 'live from bob', 'from the hook'],
  );

  bob.typing(room, true);
  await until(() => chat.typingUsers.length === 1, 'typing indicator');
  assert.deepEqual(chat.typingUsers, [{ userId: 'bob', username: 'bob' }]);
  bob.typing(room, false);
  await until(() => chat.typingUsers.length === 0, 'typing stopped');

  bob.close();
  await until(() => chat.onlineUsers.join() === 'alice', 'bob went offline');

  renderer.unmount();
  await until(async () => (await getJson(server, '/api/chats/users/alice/status', token)).body.status === 'offline', 'alice offline after unmount');
});

/** An HS256 token with the admin role (the operator API). */
function adminToken() {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'root', role: 'admin', iat: now, exp: now + 3600 })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

test('useChat drops a message an operator deleted', { skip }, async () => {
  const room = 'hook-delete';
  const bob = new ChatClient({ url: server.wsUrl, token: mintToken('bob'), roomId: room, WebSocket: recordingSockets().Socket });
  bob.connect();
  const keep = await bob.send('keep me', room);
  const oops = await bob.send('oops', room);
  let chat;
  const token = mintToken('alice');
  function Stable() {
    chat = useChat(token, room, { url: server.wsUrl, WebSocket: recordingSockets().Socket });
    return null;
  }
  const renderer = TestRenderer.create(createElement(Stable));
  await until(() => chat?.messages.length === 2, 'history loaded on join');
  const res = await fetch(`${server.httpUrl}/api/chats/rooms/${room}/messages/${oops.messageId}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${adminToken()}` },
  });
  assert.equal(res.status, 204);
  await until(() => chat.messages.length === 1, 'the deleted message dropped');
  assert.deepEqual(chat.messages.map((m) => m.messageId), [keep.messageId]);
  // Later messages still arrive.
  await bob.send('after the delete', room);
  await until(() => chat.messages.length === 2, 'live message after the delete');
  assert.deepEqual(chat.messages.map((m) => m.content), ['keep me', 'after the delete']);
  bob.close();
  renderer.unmount();
});
