// Message identity and order. chatd's message ids are ULIDs: they compare,
// as strings, in the order the room's messages were accepted, and every
// member receives a room's messages in that order (contract section 4).
// That makes "the newest id seen in a room" enough to recognise a
// duplicate, and it is the `since` of the next join.

/** Syntax of a message id (a ULID: 26 Crockford base-32 characters). */
const MESSAGE_ID = /^[0-9A-HJKMNP-TV-Z]{26}$/;
/** Syntax of a room id (contract section 2). */
const ROOM_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Whether `id` is a message id the server can have issued. */
export function isMessageId(id) {
  return typeof id === 'string' && MESSAGE_ID.test(id);
}

/** Whether `roomId` is a valid room id: 1 to 128 of letters, digits, `_ - . :`. */
export function isRoomId(roomId) {
  return typeof roomId === 'string' && ROOM_ID.test(roomId);
}

/** Orders two message ids (negative, 0, positive), as the server orders them. */
export function compareIds(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The newest message id seen per room. A `message` frame whose id is not
 * newer than the room's cursor is a duplicate (a replay after a reconnect
 * overlapping what arrived before it); a newer one is delivered and moves
 * the cursor. The cursor is the `since` of the next join, so a reconnect
 * replays exactly what was missed.
 */
export class RoomCursors {
  constructor() {
    /** @type {Map<string, string>} room -> newest message id seen */
    this.last = new Map();
  }

  /**
   * A `message` frame arrived.
   * @returns {boolean} true when it is new (deliver it), false for a duplicate
   */
  accept(roomId, messageId) {
    const last = this.last.get(roomId);
    if (last !== undefined && messageId <= last) return false;
    this.last.set(roomId, messageId);
    return true;
  }

  /**
   * A message arrived in a `history` page. It moves the cursor as well:
   * after loading the latest page, a reconnect must replay what came after
   * it, not nothing (a cursor left unset would join without `since`).
   */
  observe(roomId, messageId) {
    const last = this.last.get(roomId);
    if (last === undefined || messageId > last) this.last.set(roomId, messageId);
  }

  /** The `since` for the next join of `roomId`, or undefined when nothing was seen. */
  since(roomId) {
    return this.last.get(roomId);
  }

  /** Forgets a room (it was left: a later join starts fresh). */
  forget(roomId) {
    this.last.delete(roomId);
  }
}

/**
 * Merges messages into a list sorted by `messageId`, without duplicates:
 * live messages, history pages and replays can overlap, and the list shows
 * each message once, in server order. Returns `current` itself when nothing
 * was added (so a UI can skip a re-render).
 *
 * @template {{messageId: string}} M
 * @param {M[]} current sorted by messageId
 * @param {M[]} incoming any order
 * @returns {M[]}
 */
export function mergeMessages(current, incoming) {
  if (incoming.length === 0) return current;
  const known = new Set(current.map((m) => m.messageId));
  const fresh = [];
  for (const m of incoming) {
    if (!known.has(m.messageId)) {
      known.add(m.messageId);
      fresh.push(m);
    }
  }
  if (fresh.length === 0) return current;
  fresh.sort((a, b) => compareIds(a.messageId, b.messageId));
  // Common case: everything new is newer than what is there (live messages).
  const tail = current.length ? current[current.length - 1].messageId : '';
  if (fresh[0].messageId > tail) return current.concat(fresh);
  const out = [];
  let i = 0;
  let j = 0;
  while (i < current.length || j < fresh.length) {
    if (j >= fresh.length || (i < current.length && current[i].messageId < fresh[j].messageId)) {
      out.push(current[i++]);
    } else {
      out.push(fresh[j++]);
    }
  }
  return out;
}
