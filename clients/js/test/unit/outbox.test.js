import assert from 'node:assert/strict';
import test from 'node:test';

import { Outbox, UNAVAILABLE_RETRY_MS } from '../../src/outbox.js';

const msg = (id, roomId = 'general') => ({ clientMsgId: id, roomId, content: `text ${id}`, timestamp: 't' });
const all = () => true;

test('the queue is bounded and refuses the newest when full', () => {
  const o = new Outbox({ limit: 2 });
  assert.equal(o.push(msg('a')), true);
  assert.equal(o.push(msg('b')), true);
  assert.equal(o.push(msg('c')), false);
  assert.deepEqual(o.queue.map((q) => q.clientMsgId), ['a', 'b']);
  // The one in flight counts against the bound too.
  assert.equal(o.next(all, 0).clientMsgId, 'a');
  assert.equal(o.push(msg('c')), false);
  assert.equal(o.ack('a').clientMsgId, 'a');
  assert.equal(o.push(msg('c')), true);
  assert.equal(o.size, 2);
});

test('the limit must be a positive whole number', () => {
  assert.throws(() => new Outbox({ limit: 0 }), RangeError);
  assert.throws(() => new Outbox({ limit: 1.5 }), RangeError);
});

test('one message in flight at a time, in order', () => {
  const o = new Outbox();
  o.push(msg('a'));
  o.push(msg('b'));
  assert.equal(o.next(all, 0).clientMsgId, 'a');
  assert.equal(o.next(all, 0), null, 'b waits for the answer to a');
  assert.equal(o.ack('a').clientMsgId, 'a');
  assert.equal(o.next(all, 0).clientMsgId, 'b');
});

test('a drop puts the message in flight back first, same clientMsgId', () => {
  const o = new Outbox();
  o.push(msg('a'));
  o.push(msg('b'));
  const first = o.next(all, 0);
  o.disconnected();
  assert.equal(o.inflight, null);
  assert.deepEqual(o.queue.map((q) => q.clientMsgId), ['a', 'b']);
  assert.equal(o.next(all, 5).clientMsgId, first.clientMsgId);
});

test('a room not joined yet does not hold back other rooms, and keeps its own order', () => {
  const o = new Outbox();
  o.push(msg('a1', 'a'));
  o.push(msg('b1', 'b'));
  o.push(msg('a2', 'a'));
  const ready = (room) => room === 'b';
  assert.equal(o.next(ready, 0).clientMsgId, 'b1');
  o.ack('b1');
  assert.equal(o.next(ready, 0), null);
  assert.equal(o.next(all, 0).clientMsgId, 'a1');
});

test('rate_limited retries the same message after retryAfterMs', () => {
  const o = new Outbox();
  o.push(msg('a'));
  o.push(msg('b', 'other'));
  o.next(all, 1000);
  assert.deepEqual(o.refuse('rate_limited', 1200, 1000), { item: o.queue[0], retry: true });
  assert.equal(o.nextRetryAt(), 2200);
  // Another room's message may go meanwhile; this room's waits.
  assert.equal(o.next(all, 2199).clientMsgId, 'b');
  o.ack('b');
  assert.equal(o.next(all, 2199), null);
  assert.equal(o.next(all, 2200).clientMsgId, 'a');
});

test('unavailable retries with a doubling delay', () => {
  const o = new Outbox();
  o.push(msg('a'));
  o.next(all, 0);
  o.refuse('unavailable', undefined, 0);
  assert.equal(o.nextRetryAt(), UNAVAILABLE_RETRY_MS);
  o.next(all, UNAVAILABLE_RETRY_MS);
  o.refuse('unavailable', undefined, UNAVAILABLE_RETRY_MS);
  assert.equal(o.nextRetryAt(), 3 * UNAVAILABLE_RETRY_MS);
});

test('other refusals are final', () => {
  for (const code of ['message_blocked', 'message_too_long', 'invalid_message', 'not_in_room', 'internal']) {
    const o = new Outbox();
    o.push(msg('a'));
    o.next(all, 0);
    const r = o.refuse(code, undefined, 0);
    assert.equal(r.retry, false, code);
    assert.equal(r.item.clientMsgId, 'a');
    assert.equal(o.size, 0, code);
  }
  assert.equal(new Outbox().refuse('rate_limited', 1, 0), null, 'nothing in flight');
});

test('an ack for a queued copy (answered late) removes it; an unknown ack is ignored', () => {
  const o = new Outbox();
  o.push(msg('a'));
  o.push(msg('b'));
  assert.equal(o.ack('b').clientMsgId, 'b');
  assert.equal(o.ack('zzz'), null);
  assert.deepEqual(o.queue.map((q) => q.clientMsgId), ['a']);
});

test('leaving a room drops its messages, in flight included', () => {
  const o = new Outbox();
  o.push(msg('a1', 'a'));
  o.push(msg('b1', 'b'));
  o.push(msg('a2', 'a'));
  o.next(all, 0);
  assert.deepEqual(o.dropRoom('a').map((q) => q.clientMsgId), ['a1', 'a2']);
  assert.equal(o.inflight, null);
  assert.deepEqual(o.drain().map((q) => q.clientMsgId), ['b1']);
  assert.equal(o.size, 0);
});
