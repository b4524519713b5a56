// Typing indicators, both ways: a throttle for the ones this client sends,
// and a tracker with expiry for the ones it receives. Time is passed in (ms).

/** Default typing settings (milliseconds). */
export const TYPING_DEFAULTS = Object.freeze({
  /** At most one `isTyping: true` per room this often while the user keeps typing. */
  intervalMs: 2_000,
  /** No keystroke for this long: `isTyping: false` is sent. */
  idleMs: 5_000,
  /**
   * A received `isTyping: true` counts this long unless refreshed. Senders
   * refresh every `intervalMs`; a stop can be lost (chatd drops typing frames
   * to a busy connection), so an indicator must also expire on its own.
   */
  ttlMs: 6_000,
});

/**
 * Outgoing throttle for one room. The user's keystrokes call `input`; the
 * throttle says when a frame is due. The server has its own flood bound
 * (burst of 10, then one per 200 ms); this keeps a normal typist far below
 * it: one `true` per `intervalMs`, one `false` when they stop.
 */
export class TypingThrottle {
  /** @param {Partial<typeof TYPING_DEFAULTS>} [settings] */
  constructor(settings = {}) {
    const s = { ...TYPING_DEFAULTS, ...settings };
    /** Shortest gap between two `true` frames. */
    this.intervalMs = s.intervalMs;
    /** Quiet time after which the user has stopped typing. */
    this.idleMs = s.idleMs;
    /** Whether the last frame sent said `true`. */
    this.typing = false;
    /** When the last `true` was sent (ms). */
    this.sentAt = -Infinity;
    /** When the user last typed (ms). */
    this.inputAt = -Infinity;
  }

  /**
   * The user typed at `now`.
   * @returns {boolean} whether to send `isTyping: true` now
   */
  input(now) {
    this.inputAt = now;
    if (this.typing && now - this.sentAt < this.intervalMs) return false;
    this.typing = true;
    this.sentAt = now;
    return true;
  }

  /**
   * The user stopped (sent the message, cleared the field, left the room).
   * @returns {boolean} whether to send `isTyping: false` now
   */
  stop() {
    if (!this.typing) return false;
    this.typing = false;
    return true;
  }

  /**
   * When the idle stop is due (ms), or null while not typing; the caller
   * sets a timer for it and then calls `idle`.
   * @returns {number | null}
   */
  idleAt() {
    return this.typing ? this.inputAt + this.idleMs : null;
  }

  /**
   * Checks the idle stop at `now`.
   * @returns {boolean} whether to send `isTyping: false` now
   */
  idle(now) {
    if (this.typing && now - this.inputAt >= this.idleMs) {
      this.typing = false;
      return true;
    }
    return false;
  }

  /** Forgets the state (the connection dropped: the server dropped our indicator too). */
  reset() {
    this.typing = false;
    this.sentAt = -Infinity;
  }
}

/**
 * Who is typing, per room, from received `typing_indicator` frames.
 */
export class TypingTracker {
  /** @param {{ttlMs?: number}} [settings] */
  constructor({ ttlMs = TYPING_DEFAULTS.ttlMs } = {}) {
    /** How long a `true` counts without a refresh. */
    this.ttlMs = ttlMs;
    /** @type {Map<string, Map<string, {username: string, until: number}>>} room -> user -> expiry */
    this.rooms = new Map();
  }

  /**
   * Applies a `typing_indicator` frame received at `now`.
   * @param {{roomId: string, userId: string, username?: string, isTyping: boolean}} frame
   * @param {number} now ms
   */
  update(frame, now) {
    let users = this.rooms.get(frame.roomId);
    if (frame.isTyping) {
      if (!users) this.rooms.set(frame.roomId, (users = new Map()));
      users.set(frame.userId, { username: frame.username ?? frame.userId, until: now + this.ttlMs });
    } else if (users) {
      users.delete(frame.userId);
      if (users.size === 0) this.rooms.delete(frame.roomId);
    }
  }

  /** A user stopped being shown, e.g. they sent a message or went offline. */
  remove(roomId, userId) {
    this.update({ roomId, userId, isTyping: false }, 0);
  }

  /**
   * The users typing in `roomId` at `now`, sorted by user id; expired entries are dropped.
   * @returns {{userId: string, username: string}[]}
   */
  typing(roomId, now) {
    const users = this.rooms.get(roomId);
    if (!users) return [];
    const out = [];
    for (const [userId, { username, until }] of users) {
      if (until > now) out.push({ userId, username });
      else users.delete(userId);
    }
    if (users.size === 0) this.rooms.delete(roomId);
    return out.sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0));
  }

  /**
   * When the next entry of `roomId` expires (ms), or null; for a re-render timer.
   * @returns {number | null}
   */
  nextExpiry(roomId) {
    const users = this.rooms.get(roomId);
    if (!users) return null;
    let at = null;
    for (const { until } of users.values()) if (at === null || until < at) at = until;
    return at;
  }
}
