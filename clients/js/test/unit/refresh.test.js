// Token renewal and the session close codes against a fake WebSocket and a
// manual clock: the refresh is scheduled from the token's `exp`, every
// reconnect asks `getToken` again, 4001 reconnects only with `getToken`, and
// 4003 never reconnects. Time moves only when the test advances it.

import assert from 'node:assert/strict';
import test from 'node:test';

import { ChatClient, REFRESH_RETRY_MS } from '../../src/client.js';
import { FakeClock, fakeWebSocketClass, settle } from '../helpers/fakes.js';

/** An unsigned JWT-shaped token with `claims` (the client never checks signatures). */
function jwt(claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}

/** A client whose `getToken` hands out `tokens` in order (the last one again when they run out). */
function setup({ tokens, token, getToken = true } = {}) {
  const clock = new FakeClock(1_000_000_000); // ms: Unix second 1,000,000
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const calls = [];
  const list = tokens ?? [];
  const options = {
    url: 'ws://chat.test/ws',
    roomId: 'general',
    WebSocket: FakeWebSocket,
    fetch: async () => {
      throw new TypeError('fetch failed');
    },
    clock: clock.api(),
    random: () => 0.5,
    // No heartbeat: these tests move the clock by hours with no server to answer pings.
    pingIntervalMs: 0,
  };
  if (token !== undefined) options.token = token;
  if (getToken) {
    options.getToken = async () => {
      calls.push(clock.now());
      return list[Math.min(calls.length - 1, list.length - 1)];
    };
  }
  const client = new ChatClient(options);
  const events = [];
  for (const name of ['refreshed', 'state', 'close', 'auth_failed', 'refused', 'error']) {
    client.on(name, (e) => events.push([name, e]));
  }
  const of = (name) => events.filter(([n]) => n === name).map(([, e]) => e);
  return { clock, sockets, client, calls, of };
}

const NOW_S = 1_000_000;

test('refreshes before exp with a token from getToken and reschedules from the answer', async () => {
  const first = jwt({ sub: 'ann', iat: NOW_S, exp: NOW_S + 3600 });
  const second = jwt({ sub: 'ann', iat: NOW_S + 3570, exp: NOW_S + 7200 });
  const { clock, sockets, client, calls, of } = setup({ tokens: [first, second] });
  client.connect();
  await settle();
  assert.equal(new URL(sockets[0].url).searchParams.get('token'), first);
  sockets[0].serverOpen('general');
  // An hour's token: renewed 30 s before exp, not earlier.
  clock.advance(3570_000 - 1);
  await settle();
  assert.deepEqual(sockets[0].sentOfType('refresh'), []);
  clock.advance(1);
  await settle();
  assert.deepEqual(sockets[0].sentOfType('refresh'), [{ type: 'refresh', token: second }]);
  assert.equal(calls.length, 2);
  sockets[0].serverSend({ type: 'refreshed', exp: NOW_S + 7200 });
  assert.deepEqual(of('refreshed'), [{ type: 'refreshed', exp: NOW_S + 7200 }]);
  // The next renewal runs from the new exp.
  clock.advance(3600_000 - 1);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
  clock.advance(1);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 2);
});

test('a short-lived token is renewed with a fifth of its life left', async () => {
  const short = jwt({ sub: 'ann', iat: NOW_S, exp: NOW_S + 10 });
  const { clock, sockets, client } = setup({ tokens: [short] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  clock.advance(7_999);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 0);
  clock.advance(1);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
});

test('refreshed with exp null stops renewing; a token without exp is never renewed', async () => {
  const first = jwt({ sub: 'ann', exp: NOW_S + 100 });
  const forever = jwt({ sub: 'ann' });
  const { clock, sockets, client, calls } = setup({ tokens: [first, forever] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  clock.advance(100_000);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
  sockets[0].serverSend({ type: 'refreshed', exp: null });
  clock.advance(10 * 24 * 3600_000);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
  assert.equal(calls.length, 2);
  assert.deepEqual(clock.pending(), [], 'no renewal scheduled');
});

test('a refused refresh is tried again after REFRESH_RETRY_MS', async () => {
  const first = jwt({ sub: 'ann', iat: NOW_S, exp: NOW_S + 3600 });
  const { clock, sockets, client, calls } = setup({ tokens: [first, 'bad', first] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  clock.advance(3570_000);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').at(-1).token, 'bad');
  sockets[0].serverSend({ type: 'error', code: 'invalid_token', message: 'invalid token: malformed token' });
  clock.advance(REFRESH_RETRY_MS - 1);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
  clock.advance(1);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 2);
  assert.equal(calls.length, 3);
  assert.equal(client.state, 'open');
});

test('a rate-limited refresh is tried again after retryAfterMs', async () => {
  const first = jwt({ sub: 'ann', iat: NOW_S, exp: NOW_S + 3600 });
  const { clock, sockets, client } = setup({ tokens: [first] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  clock.advance(3570_000);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
  sockets[0].serverSend({ type: 'error', code: 'rate_limited', message: 'too many refresh frames', retryAfterMs: 2_500 });
  clock.advance(2_499);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 1);
  clock.advance(1);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 2);
});

test('every reconnect asks getToken for its token, and 4001 reconnects with a fresh one', async () => {
  const tokens = ['t1', 't2', 't3'].map((t) => jwt({ sub: 'ann', jti: t }));
  const { clock, sockets, client, calls, of } = setup({ tokens });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  sockets[0].serverClose(1006);
  clock.advance(1_000);
  await settle();
  assert.equal(new URL(sockets[1].url).searchParams.get('token'), tokens[1]);
  sockets[1].serverOpen('general');
  sockets[1].serverClose(4001, 'token expired');
  assert.equal(of('close').at(-1).reconnect, true);
  clock.advance(30_000);
  await settle();
  assert.equal(sockets.length, 3);
  assert.equal(new URL(sockets[2].url).searchParams.get('token'), tokens[2]);
  assert.equal(calls.length, 3);
});

test('a token given with getToken is used for the first connection only', async () => {
  const { clock, sockets, client, calls } = setup({ token: 'given', tokens: ['fresh'] });
  client.connect();
  await settle();
  assert.equal(new URL(sockets[0].url).searchParams.get('token'), 'given');
  assert.equal(calls.length, 0);
  sockets[0].serverOpen('general');
  sockets[0].serverClose(4001, 'token expired');
  clock.advance(30_000);
  await settle();
  assert.equal(new URL(sockets[1].url).searchParams.get('token'), 'fresh');
});

test('4001 without getToken does not reconnect and reports auth_failed', async () => {
  const { clock, sockets, client, of } = setup({ token: 'static', getToken: false });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  sockets[0].serverClose(4001, 'token expired');
  await settle();
  assert.equal(client.state, 'auth_failed');
  assert.deepEqual(of('auth_failed'), [{ status: undefined, code: 4001, error: 'token expired' }]);
  assert.equal(of('close').at(-1).reconnect, false);
  clock.advance(3_600_000);
  await settle();
  assert.equal(sockets.length, 1);
});

test('4003 (banned) never reconnects, even with getToken', async () => {
  const { clock, sockets, client, calls, of } = setup({ tokens: [jwt({ sub: 'ann' })] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  sockets[0].serverClose(4003, 'banned');
  await settle();
  assert.equal(client.state, 'refused');
  assert.deepEqual(of('refused'), [{ status: undefined, code: 4003, error: 'banned' }]);
  assert.equal(of('close').at(-1).reconnect, false);
  clock.advance(3_600_000);
  await settle();
  assert.equal(sockets.length, 1);
  assert.equal(calls.length, 1);
});

test('4002 (disconnected by an operator) reconnects with the backoff', async () => {
  const { clock, sockets, client } = setup({ tokens: [jwt({ sub: 'ann' })] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  sockets[0].serverClose(4002, 'disconnected');
  assert.equal(client.state, 'reconnecting');
  clock.advance(1_000);
  await settle();
  assert.equal(sockets.length, 2);
});

test('a refresh timer does not outlive its connection', async () => {
  const first = jwt({ sub: 'ann', iat: NOW_S, exp: NOW_S + 60 });
  const { clock, sockets, client, calls } = setup({ tokens: [first] });
  client.connect();
  await settle();
  sockets[0].serverOpen('general');
  client.close();
  clock.advance(120_000);
  await settle();
  assert.equal(sockets[0].sentOfType('refresh').length, 0);
  assert.equal(calls.length, 1);
});
