// The client's recovery against the real chatd binary (CHATD_BIN): more
// missed than the server's 1,000-message replay gives `recovered: false`,
// and the client pages the rest with `history` by itself, once, without
// reconnecting.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ChatClient } from '../../src/client.js';
import { chatdBinary, mintToken, startServer, until } from '../helpers/server.js';
import { recordingSockets } from '../helpers/sockets.js';

const skip = chatdBinary() ? false : 'CHATD_BIN is not set to a chatd binary';

describe('recovery against chatd', { skip }, () => {
  let server;
  const clients = [];
  before(async () => {
    // One sender posts 1,011 messages (the default rate limit, 30 a minute,
    // exists to refuse that), and the room keeps 2,000 in memory so the
    // ones beyond the replay can still be paged.
    server = await startServer({ env: { RATE_LIMIT_MAX_MESSAGES: '1000000', HISTORY_PER_ROOM: '2000' } });
  });
  after(async () => {
    for (const c of clients) c.close();
    await server?.kill();
  });

  test('recovered:false: the gap beyond the replay is paged with history, every message once', async () => {
    const room = 'gap-room';
    const { Socket, sockets } = recordingSockets();
    const alice = new ChatClient({ url: server.wsUrl, token: mintToken('alice'), roomId: room, WebSocket: Socket });
    const bob = new ChatClient({ url: server.wsUrl, token: mintToken('bob'), roomId: room, WebSocket: recordingSockets().Socket });
    clients.push(alice, bob);
    const seen = [];
    const joins = [];
    const recoveries = [];
    alice.on('message', (m) => seen.push(m.messageId));
    alice.on('room_joined', (f) => joins.push(f));
    alice.on('recovery', (e) => recoveries.push(e));
    alice.connect();
    bob.connect();
    await until(() => alice.isJoined(room) && bob.isJoined(room), 'both joined');
    const first = await bob.send('before', room);
    await until(() => seen.length === 1, 'alice saw the first message');

    alice.close();
    const ids = [first.messageId];
    for (let i = 0; i < 1010; i++) ids.push((await bob.send(`missed ${i}`, room)).messageId);
    alice.connect();
    await until(() => recoveries.length === 1, 'the recovery ended', 60_000);

    assert.equal(sockets.length, 2, 'one reconnect: the one the test asked for');
    const since = new URL(sockets.at(-1).url).searchParams.get('since');
    assert.equal(since, first.messageId, 'rejoined from the last message seen');
    assert.equal(joins.at(-1).recovered, false);
    assert.deepEqual(recoveries[0], { roomId: room, since: first.messageId, complete: true, pages: 1, messages: 10 });
    assert.equal(seen.length, ids.length, 'every message once');
    assert.deepEqual([...seen].sort(), ids, 'no gap, no duplicate');
    assert.equal(alice.duplicatesDropped, 0);
    // Live after it, on the same connection.
    const live = await bob.send('live', room);
    await until(() => seen.length === ids.length + 1, 'the live message');
    assert.equal(seen.at(-1), live.messageId);
    assert.equal(alice.lastMessageId(room), live.messageId);
  });
});
