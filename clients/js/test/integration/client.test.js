// The client against the real chatd binary (CHATD_BIN): reconnect with
// `since`, sends queued through a server outage, a resend after a lost ack
// stored once, and no reconnect after a 401.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ChatClient } from '../../src/client.js';
import { chatdBinary, getJson, mintToken, startServer, until } from '../helpers/server.js';
import { recordingSockets, trackingClock } from '../helpers/sockets.js';

const skip = chatdBinary() ? false : 'CHATD_BIN is not set to a chatd binary';

/** A connected client of `server` and the list of `message` events it delivered. */
async function connected(server, user, roomId, options = {}) {
  const { Socket, sockets, swallow } = recordingSockets(options.sockets);
  const client = new ChatClient({
    url: server.wsUrl,
    token: mintToken(user),
    roomId,
    WebSocket: Socket,
    ...options.client,
  });
  const messages = [];
  const opens = [];
  client.on('message', (m) => messages.push(m));
  client.on('open', () => opens.push(Date.now()));
  client.connect();
  await until(() => client.isJoined(roomId), `${user} joined ${roomId}`);
  return { client, messages, opens, sockets, swallow };
}

/** The stored messages of a room, from the history route. */
async function stored(server, roomId) {
  const { status, body } = await getJson(server, `/api/chats/rooms/${roomId}/messages?limit=200`, mintToken('auditor'));
  assert.equal(status, 200);
  return body.messages;
}

async function metric(server, series) {
  const res = await fetch(`${server.httpUrl}/metrics`);
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('client against chatd', { skip }, () => {
  let server;
  const clients = [];
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    for (const c of clients) c.close();
    await server?.kill();
  });

  test('after a dropped socket it rejoins with since and sees every message once', async () => {
    const room = 'since-room';
    // A 1.8 s reconnect delay (window 2 s, random 0.9) leaves time for the
    // messages sent meanwhile to be stored before the client is back.
    const alice = await connected(server, 'alice', room, {
      client: { reconnect: { baseMs: 2000 }, random: () => 0.9 },
    });
    const bob = await connected(server, 'bob', room);
    clients.push(alice.client, bob.client);
    const acks = [];
    for (const text of ['m1', 'm2', 'm3']) acks.push(await bob.client.send(text, room));
    await until(() => alice.messages.length === 3, 'alice got m1..m3');

    alice.sockets.at(-1).terminate(); // the TCP connection drops, no close frame
    await until(() => alice.client.state === 'reconnecting', 'alice noticed the drop');
    for (const text of ['m4', 'm5']) acks.push(await bob.client.send(text, room));
    const storedBeforeReturn = Date.now();
    assert.equal(alice.opens.length, 1, 'm4 and m5 were stored while alice was away');

    await until(() => alice.messages.length >= 5 && alice.client.isJoined(room), 'alice caught up');
    assert.ok(alice.opens[1] > storedBeforeReturn);
    const since = new URL(alice.sockets.at(-1).url).searchParams.get('since');
    assert.equal(since, acks[2].messageId, 'rejoined from the last message seen');
    assert.deepEqual(
      alice.messages.map((m) => [m.messageId, m.content]),
      acks.map((a, i) => [a.messageId, `m${i + 1}`]),
    );
    // Nothing more arrives late: a live message after the replay is the 6th.
    const a6 = await bob.client.send('m6', room);
    await until(() => alice.messages.length === 6, 'm6');
    assert.equal(alice.messages[5].messageId, a6.messageId);
    assert.equal(alice.client.duplicatesDropped, 0);
  });

  test('a resend after a lost ack is stored once (clientMsgId dedupe)', async () => {
    const room = 'dedupe-room';
    const alice = await connected(server, 'carol', room, { client: { reconnect: { baseMs: 100 } } });
    clients.push(alice.client);
    const duplicatesBefore = (await metric(server, 'chat_messages_received_total{outcome="duplicate"}')) ?? 0;
    alice.swallow.add('ack'); // the ack is lost on the way
    const sent = alice.client.send('exactly once', room);
    const first = await until(async () => (await stored(server, room)).length === 1 && (await stored(server, room))[0], 'stored');
    assert.equal(alice.client.queued, 1, 'still waiting for the ack');

    alice.sockets.at(-1).terminate();
    alice.swallow.delete('ack');
    const ack = await sent; // resent on the new connection, same clientMsgId
    assert.equal(ack.clientMsgId, sent.clientMsgId);
    assert.equal(ack.messageId, first.messageId, 'the repeat is acknowledged with the original id');
    assert.equal(alice.sockets.length, 2);
    const messages = await stored(server, room);
    assert.deepEqual(messages.map((m) => m.content), ['exactly once']);
    // /metrics may answer from a snapshot up to 1 s old: poll for the count.
    const duplicates = 'chat_messages_received_total{outcome="duplicate"}';
    await until(async () => (await metric(server, duplicates)) === duplicatesBefore + 1, 'the repeat counted as a duplicate');
    assert.deepEqual(alice.messages.map((m) => m.messageId), [first.messageId], 'delivered once');
  });

  test('sends queued while the server is down are delivered after it restarts on the same port, once each', async () => {
    const room = 'outage-room';
    const dave = await connected(server, 'dave', room, { client: { reconnect: { baseMs: 200, capMs: 1000 } } });
    clients.push(dave.client);
    const before = await dave.client.send('before the outage', room);
    await until(() => dave.messages.length === 1, 'own message echoed');

    const port = server.port;
    await server.kill();
    await until(() => dave.client.state !== 'open', 'dave noticed the outage');
    const queued = ['q1', 'q2', 'q3'].map((t) => dave.client.send(t, room));
    assert.equal(dave.client.queued, 3);

    server = await startServer({ port });
    const acks = await Promise.all(queued);
    assert.equal(dave.client.queued, 0);
    // In-memory history starts empty after a restart: exactly the three queued, in order.
    const messages = await stored(server, room);
    assert.deepEqual(messages.map((m) => m.content), ['q1', 'q2', 'q3']);
    assert.deepEqual(messages.map((m) => m.messageId), acks.map((a) => a.messageId));
    await until(() => dave.messages.length === 4, 'dave got his queued messages');
    assert.deepEqual(dave.messages.map((m) => m.messageId), [before.messageId, ...acks.map((a) => a.messageId)]);
  });

  for (const hideStatus of [false, true]) {
    const how = hideStatus ? 'found by the HTTP probe, as in a browser' : 'from the refused upgrade';
    test(`no reconnect after a 401 (${how})`, async () => {
      const { Socket, sockets } = recordingSockets({ hideStatus });
      const clock = trackingClock();
      const client = new ChatClient({
        url: server.wsUrl,
        token: mintToken('mallory', { secret: 'not-the-server-secret' }),
        roomId: 'general',
        WebSocket: Socket,
        clock,
      });
      const refusals = [];
      client.on('auth_failed', (e) => refusals.push(e));
      client.connect();
      await until(() => client.state === 'auth_failed', 'auth_failed');
      assert.equal(refusals.length, 1);
      assert.equal(refusals[0].status, 401);
      assert.equal(sockets.length, 1, 'one attempt only');
      assert.equal(client.reconnectAt, null);
      assert.equal(clock.pending.size, 0, 'no timer left that could reconnect');
    });
  }

  test('an expired token is an authentication refusal too', async () => {
    const client = new ChatClient({
      url: server.wsUrl,
      token: mintToken('erin', { ttlSeconds: -60 }),
      WebSocket: recordingSockets().Socket,
    });
    client.connect();
    await until(() => client.state === 'auth_failed', 'auth_failed');
    assert.equal(client.reconnectAt, null);
  });
});
