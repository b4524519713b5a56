import assert from 'node:assert/strict';
import test from 'node:test';

import { TypingThrottle, TypingTracker } from '../../src/typing.js';

test('one true per interval while typing', () => {
  const t = new TypingThrottle({ intervalMs: 2000, idleMs: 5000 });
  const sent = [];
  for (let ms = 0; ms <= 5000; ms += 100) if (t.input(ms)) sent.push(ms);
  assert.deepEqual(sent, [0, 2000, 4000]);
});

test('stop sends false once, only after a true', () => {
  const t = new TypingThrottle();
  assert.equal(t.stop(), false);
  t.input(0);
  assert.equal(t.stop(), true);
  assert.equal(t.stop(), false);
  // Typing again right after a stop sends true at once.
  assert.equal(t.input(10), true);
});

test('idle: false is due idleMs after the last keystroke', () => {
  const t = new TypingThrottle({ intervalMs: 2000, idleMs: 5000 });
  t.input(0);
  t.input(3000);
  assert.equal(t.idleAt(), 8000);
  assert.equal(t.idle(7999), false);
  assert.equal(t.idle(8000), true);
  assert.equal(t.idleAt(), null);
  assert.equal(t.idle(9000), false);
});

test('reset forgets the state after a drop', () => {
  const t = new TypingThrottle();
  t.input(0);
  t.reset();
  assert.equal(t.stop(), false);
  assert.equal(t.input(1), true);
});

test('the tracker expires indicators that are not refreshed', () => {
  const tr = new TypingTracker({ ttlMs: 6000 });
  tr.update({ roomId: 'r', userId: 'bob', username: 'Bob', isTyping: true }, 0);
  tr.update({ roomId: 'r', userId: 'alice', isTyping: true }, 1000);
  assert.deepEqual(tr.typing('r', 5999), [
    { userId: 'alice', username: 'alice' },
    { userId: 'bob', username: 'Bob' },
  ]);
  assert.equal(tr.nextExpiry('r'), 6000);
  assert.deepEqual(tr.typing('r', 6000), [{ userId: 'alice', username: 'alice' }]);
  // A refresh extends; a stop removes at once.
  tr.update({ roomId: 'r', userId: 'alice', isTyping: true }, 6500);
  assert.deepEqual(tr.typing('r', 12_000).map((u) => u.userId), ['alice']);
  tr.update({ roomId: 'r', userId: 'alice', isTyping: false }, 12_001);
  assert.deepEqual(tr.typing('r', 12_001), []);
  assert.equal(tr.nextExpiry('r'), null);
  assert.deepEqual(tr.typing('other', 0), []);
});
