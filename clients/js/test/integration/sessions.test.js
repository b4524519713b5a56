// Token renewal against the real chatd binary (CHATD_BIN): a client with
// `getToken` renews a short-lived token on the open connection and is still
// served after that token's exp plus the grace; a client with a fixed token
// is closed 4001 and does not reconnect.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import WebSocket from 'ws';

import { ChatClient } from '../../src/client.js';
import { DEADLINE_MS, chatdBinary, mintToken, startServer, until } from '../helpers/server.js';

const skip = chatdBinary() ? false : 'CHATD_BIN is not set to a chatd binary';

/** The grace the server runs with here (see `before`). */
const GRACE_MS = 1_000;

describe('token renewal against chatd', { skip }, () => {
  let server;
  const clients = [];
  before(async () => {
    // TOKEN_EXPIRY_GRACE_MS=1000 instead of the default 25 s: the fixed-token
    // case waits out exp plus the grace before its 4001 arrives, and 1 s runs
    // the same path 24 s sooner.
    server = await startServer({ env: { TOKEN_EXPIRY_GRACE_MS: String(GRACE_MS) } });
  });
  after(async () => {
    for (const c of clients) c.close();
    await server?.kill();
  });

  test('getToken renews a 3 s token before exp, and the connection outlives it', async () => {
    const issued = [];
    const client = new ChatClient({
      url: server.wsUrl,
      // The first token lives 3 s; the renewal gets an hour.
      getToken: async () => {
        const token = mintToken('renewer', { ttlSeconds: issued.length === 0 ? 3 : 3600 });
        issued.push(token);
        return token;
      },
      roomId: 'renew-room',
      WebSocket,
    });
    clients.push(client);
    const refreshed = [];
    const closes = [];
    const pongs = [];
    client.on('refreshed', (f) => refreshed.push(f));
    client.on('close', (e) => closes.push(e));
    client.on('pong', (f) => pongs.push(f));
    client.connect();
    await until(() => client.isJoined('renew-room'), 'renewer joined');
    const firstExp = JSON.parse(Buffer.from(issued[0].split('.')[1], 'base64url')).exp;
    await until(() => refreshed.length === 1, 'the refreshed answer');
    const secondExp = JSON.parse(Buffer.from(issued[1].split('.')[1], 'base64url')).exp;
    assert.deepEqual(refreshed, [{ type: 'refreshed', exp: secondExp }]);
    assert.ok(Date.now() < firstExp * 1000, 'renewed before the first token expired');
    // Past the first token's exp plus the grace (and a sweep), still served.
    const oldDeadline = firstExp * 1000 + GRACE_MS + 1_000;
    await until(() => Date.now() > oldDeadline, 'the old deadline to pass', DEADLINE_MS);
    assert.equal(client.ping(), true);
    await until(() => pongs.length === 1, 'a pong after the old deadline');
    assert.deepEqual(closes, []);
    assert.equal(issued.length, 2, 'getToken: the connection and one renewal');
    assert.equal(client.state, 'open');
  });

  test('a fixed token is closed 4001 after exp plus the grace and not reconnected', async () => {
    const token = mintToken('fixed', { ttlSeconds: 2 });
    const exp = JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp;
    const client = new ChatClient({ url: server.wsUrl, token, roomId: 'fixed-room', WebSocket });
    clients.push(client);
    const closes = [];
    const failures = [];
    client.on('close', (e) => closes.push({ ...e, at: Date.now() }));
    client.on('auth_failed', (e) => failures.push(e));
    client.connect();
    await until(() => client.isJoined('fixed-room'), 'fixed joined');
    await until(() => closes.length === 1, 'the 4001 close', DEADLINE_MS);
    assert.equal(closes[0].code, 4001);
    assert.equal(closes[0].reason, 'token expired');
    assert.equal(closes[0].reconnect, false);
    assert.ok(closes[0].at >= exp * 1000 + GRACE_MS, `closed ${exp * 1000 + GRACE_MS - closes[0].at} ms early`);
    assert.deepEqual(failures, [{ status: undefined, code: 4001, error: 'token expired' }]);
    assert.equal(client.state, 'auth_failed');
  });
});
