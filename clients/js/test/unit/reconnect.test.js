import assert from 'node:assert/strict';
import test from 'node:test';

import { CloseCode, RECONNECT_DEFAULTS, Reconnector, backoffDelay, classifyRefusal } from '../../src/reconnect.js';

const S = { baseMs: 500, capMs: 30_000 };

test('the backoff window doubles per attempt', () => {
  // random just below 1 draws the top of the window.
  const top = () => 0.999_999;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, S, top)),
    [499, 999, 1999, 3999, 7999, 15999],
  );
});

test('the cap bounds the window before the jitter', () => {
  // Cap first: at attempt 10 the window is min(30000, 512000) = 30000, and
  // a half draw is half the cap (jitter after the cap), not half of 512000
  // capped afterwards.
  assert.equal(backoffDelay(10, S, () => 0.5), 15_000);
  assert.equal(backoffDelay(10, S, () => 0.999_999), 29_999);
  // Huge attempts stay finite and capped.
  assert.equal(backoffDelay(10_000, S, () => 0.5), 15_000);
});

test('full jitter draws from zero', () => {
  assert.equal(backoffDelay(3, S, () => 0), 0);
  assert.equal(backoffDelay(3, S, () => 0.25), 1000);
});

test('failures grow the attempt counter; a stable connection resets it', () => {
  const r = new Reconnector({}, () => 0.5);
  const t0 = 1_000;
  // Three failed attempts (never opened).
  assert.deepEqual(r.closed(1006, t0), { delayMs: 250, attempt: 0, kind: 'backoff' });
  assert.deepEqual(r.closed(1006, t0), { delayMs: 500, attempt: 1, kind: 'backoff' });
  assert.deepEqual(r.closed(1006, t0), { delayMs: 1000, attempt: 2, kind: 'backoff' });
  // Open briefly (under stableMs): still counts as failing.
  r.opened(t0);
  assert.equal(r.closed(1006, t0 + RECONNECT_DEFAULTS.stableMs - 1).attempt, 3);
  // Open long enough: healthy, the next reconnect starts from the first window.
  r.opened(t0);
  assert.deepEqual(r.closed(1001, t0 + RECONNECT_DEFAULTS.stableMs), { delayMs: 250, attempt: 0, kind: 'backoff' });
});

test('1012 waits a random delay in the restart range and is not a failure', () => {
  const low = new Reconnector({}, () => 0);
  const high = new Reconnector({}, () => 0.999_999);
  assert.deepEqual(low.closed(CloseCode.SERVICE_RESTART, 0), { delayMs: 1000, attempt: 0, kind: 'restart' });
  assert.equal(high.closed(CloseCode.SERVICE_RESTART, 0).delayMs, 4999);
  assert.equal(low.attempt, 0);
  const custom = new Reconnector({ restartDelayMs: [10, 20] }, () => 0.5);
  assert.equal(custom.closed(1012, 0).delayMs, 15);
});

test('1013 continues the backoff from the overload floor', () => {
  const r = new Reconnector({}, () => 0.999_999);
  r.opened(0);
  // Even after a long healthy connection, a slow-consumer close does not
  // reconnect within the first window: window 500 * 2^3 = 4000.
  assert.deepEqual(r.closed(CloseCode.TRY_AGAIN_LATER, 60_000), { delayMs: 3999, attempt: 3, kind: 'overload' });
  // And the next failure keeps growing from there.
  assert.equal(r.closed(1006, 60_000).attempt, 4);
});

test('refusals: 401/403 are authentication, 400/404/426 are final, the rest is retried', () => {
  assert.equal(classifyRefusal(401), 'auth');
  assert.equal(classifyRefusal(403), 'auth');
  for (const s of [400, 404, 426]) assert.equal(classifyRefusal(s), 'refused');
  for (const s of [undefined, 200, 500, 502, 503]) assert.equal(classifyRefusal(s), 'retry');
});
