// Messages the application sent that the server has not acknowledged yet:
// a bounded queue, one message in flight at a time. No timers and no I/O;
// the caller passes the time.
//
// One in flight at a time because chatd's `error` frames carry no
// `clientMsgId`: with a single message outstanding, an error about a message
// can only be about that one, so a refused message is reported to its own
// sender and a rate-limited one is retried after `retryAfterMs`. Every
// message carries a `clientMsgId`, and a message whose fate is unknown (the
// connection dropped before its ack) is sent again with the same id: the
// server keeps the first copy and acknowledges the repeat with the original
// `messageId` (5 minute window), so nothing is stored twice.

/** Default bound of the queue (messages, the one in flight included). */
export const OUTBOX_LIMIT = 100;

/** Error codes that concern a `message` frame (contract section 4). */
export const MESSAGE_ERROR_CODES = Object.freeze(
  new Set([
    'invalid_message',
    'not_in_room',
    'message_too_long',
    'message_blocked',
    'rate_limited',
    'unavailable',
    'internal',
  ]),
);

/** Codes after which the same message is sent again later. */
const RETRY_CODES = new Set(['rate_limited', 'unavailable']);

/** First retry delay after `unavailable` (a backend buffer was full); doubles per retry. */
export const UNAVAILABLE_RETRY_MS = 1_000;
/** Largest retry delay after `unavailable`. */
export const UNAVAILABLE_RETRY_CAP_MS = 30_000;

/**
 * @typedef {object} OutboxItem
 * @property {string} clientMsgId the id sent with every copy of this message
 * @property {string} roomId target room
 * @property {string} content the text
 * @property {string} timestamp ISO time the application sent it (informational for the server)
 * @property {number} retryAt earliest time (ms) to send it (again); 0 when at once
 * @property {number} retries refused-and-retried count (rate limit, unavailable)
 * @property {unknown} [token] caller's data (e.g. the promise's resolvers)
 */

export class Outbox {
  /** @param {{limit?: number}} [options] */
  constructor({ limit = OUTBOX_LIMIT } = {}) {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new RangeError(`queue limit must be a whole number of at least 1, not ${limit}`);
    }
    /** Most messages held, the one in flight included. */
    this.limit = limit;
    /** @type {OutboxItem[]} waiting messages, in send order (the one in flight is not here) */
    this.queue = [];
    /** @type {OutboxItem | null} the message sent and not yet answered */
    this.inflight = null;
    /** When the message in flight was sent (ms). */
    this.sentAt = 0;
  }

  /** Messages held, the one in flight included. */
  get size() {
    return this.queue.length + (this.inflight ? 1 : 0);
  }

  /**
   * Queues a message. When the queue is full the new message is refused
   * (returns false) and nothing already queued is dropped: the application
   * learns at once that this message was not taken, and the order of the
   * accepted ones is kept.
   *
   * @param {Omit<OutboxItem, 'retryAt' | 'retries'> & Partial<OutboxItem>} item
   * @returns {boolean} whether it was queued
   */
  push(item) {
    if (this.size >= this.limit) return false;
    this.queue.push({ retryAt: 0, retries: 0, ...item });
    return true;
  }

  /**
   * The message to send now, moved in flight: the first queued message whose
   * room is ready and whose retry time has come, if none is in flight.
   * Messages of other rooms may pass one whose room is still being joined;
   * within a room the order is kept.
   *
   * @param {(roomId: string) => boolean} ready whether a room is joined on this connection
   * @param {number} now ms
   * @returns {OutboxItem | null}
   */
  next(ready, now) {
    if (this.inflight) return null;
    const blocked = new Set();
    for (let i = 0; i < this.queue.length; i++) {
      const item = this.queue[i];
      if (blocked.has(item.roomId)) continue;
      if (!ready(item.roomId) || item.retryAt > now) {
        blocked.add(item.roomId); // keep this room's order
        continue;
      }
      this.queue.splice(i, 1);
      this.inflight = item;
      this.sentAt = now;
      return item;
    }
    return null;
  }

  /**
   * Earliest retry time among queued messages that wait for one, or null.
   * @returns {number | null}
   */
  nextRetryAt() {
    let at = null;
    for (const item of this.queue) {
      if (item.retryAt > 0 && (at === null || item.retryAt < at)) at = item.retryAt;
    }
    return at;
  }

  /**
   * An ack arrived: the message with that id is done.
   * @param {string} clientMsgId
   * @returns {OutboxItem | null} the message, or null for an id not held (a late repeat)
   */
  ack(clientMsgId) {
    if (this.inflight && this.inflight.clientMsgId === clientMsgId) {
      const item = this.inflight;
      this.inflight = null;
      return item;
    }
    // An ack for a queued copy (sent on a previous connection, answered late).
    const i = this.queue.findIndex((q) => q.clientMsgId === clientMsgId);
    if (i >= 0) return this.queue.splice(i, 1)[0];
    return null;
  }

  /**
   * The server answered the message in flight with an error frame.
   * `rate_limited` puts it back first in line until `retryAfterMs` has
   * passed; `unavailable` likewise with a doubling delay; any other code
   * refuses it for good.
   *
   * @param {string} code error code
   * @param {number | undefined} retryAfterMs from the frame
   * @param {number} now ms
   * @returns {{item: OutboxItem, retry: boolean} | null} null when nothing was in flight
   */
  refuse(code, retryAfterMs, now) {
    const item = this.inflight;
    if (!item) return null;
    this.inflight = null;
    if (!RETRY_CODES.has(code)) return { item, retry: false };
    item.retries += 1;
    const wait =
      code === 'rate_limited'
        ? Math.max(0, retryAfterMs ?? UNAVAILABLE_RETRY_MS)
        : Math.min(UNAVAILABLE_RETRY_CAP_MS, UNAVAILABLE_RETRY_MS * 2 ** Math.min(item.retries - 1, 20));
    item.retryAt = now + wait;
    this.queue.unshift(item);
    return { item, retry: true };
  }

  /**
   * The connection dropped: the message in flight may or may not have been
   * stored, so it goes back first in line and is sent again, with the same
   * `clientMsgId`, on the next connection.
   */
  disconnected() {
    if (this.inflight) {
      this.queue.unshift(this.inflight);
      this.inflight = null;
    }
  }

  /**
   * Removes every message of `roomId` (the room was left).
   * @returns {OutboxItem[]} the removed messages
   */
  dropRoom(roomId) {
    const dropped = this.queue.filter((q) => q.roomId === roomId);
    this.queue = this.queue.filter((q) => q.roomId !== roomId);
    if (this.inflight && this.inflight.roomId === roomId) {
      dropped.unshift(this.inflight);
      this.inflight = null;
    }
    return dropped;
  }

  /**
   * Removes everything (the client was closed).
   * @returns {OutboxItem[]}
   */
  drain() {
    const all = this.inflight ? [this.inflight, ...this.queue] : [...this.queue];
    this.inflight = null;
    this.queue = [];
    return all;
  }
}
