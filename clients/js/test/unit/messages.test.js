import assert from 'node:assert/strict';
import test from 'node:test';

import { RoomCursors, isMessageId, isRoomId, mergeMessages } from '../../src/messages.js';
import { mid } from '../helpers/fakes.js';

test('the cursor drops what is not newer than the newest seen', () => {
  const c = new RoomCursors();
  assert.equal(c.since('r'), undefined);
  assert.equal(c.accept('r', mid(1)), true);
  assert.equal(c.accept('r', mid(2)), true);
  assert.equal(c.accept('r', mid(2)), false, 'same id again');
  assert.equal(c.accept('r', mid(1)), false, 'older id (a replay overlap)');
  assert.equal(c.accept('other', mid(1)), true, 'rooms are separate');
  assert.equal(c.since('r'), mid(2));
});

test('history pages move the cursor forward, never back', () => {
  const c = new RoomCursors();
  c.observe('r', mid(5));
  assert.equal(c.since('r'), mid(5));
  c.observe('r', mid(3));
  assert.equal(c.since('r'), mid(5));
  assert.equal(c.accept('r', mid(5)), false);
  assert.equal(c.accept('r', mid(6)), true);
  c.forget('r');
  assert.equal(c.since('r'), undefined);
});

test('merge keeps order and drops duplicates', () => {
  const m = (n) => ({ messageId: mid(n), n });
  const list = [m(2), m(4)];
  assert.equal(mergeMessages(list, []), list);
  assert.equal(mergeMessages(list, [m(2)]), list, 'nothing new: same array');
  assert.deepEqual(
    mergeMessages(list, [m(5), m(1), m(3), m(4), m(1)]).map((x) => x.n),
    [1, 2, 3, 4, 5],
  );
  assert.deepEqual(mergeMessages([], [m(2), m(1)]).map((x) => x.n), [1, 2]);
});

test('id syntax', () => {
  assert.equal(isMessageId('01HQZX3Y7K8M9N0P1Q2R3S4T5V'), true);
  assert.equal(isMessageId('01HQZX3Y7K8M9N0P1Q2R3S4T5'), false);
  assert.equal(isMessageId('01HQZX3Y7K8M9N0P1Q2R3S4T5U'), false, 'U is not Crockford base 32');
  assert.equal(isRoomId('x:y.z-_1'), true);
  for (const bad of ['', 'bad room', 'caf\u00e9', 'a/b', 'r'.repeat(129)]) assert.equal(isRoomId(bad), false, bad);
  assert.equal(isRoomId('r'.repeat(128)), true);
});
