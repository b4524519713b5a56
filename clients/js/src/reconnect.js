// When and how soon to reconnect: exponential backoff with full jitter, and
// what each close code means for the next attempt. No timers and no I/O:
// the caller passes the time and the random source, so every decision is
// unit-tested without waiting.

/** WebSocket close codes this client acts on (RFC 6455 and the IANA registry). */
export const CloseCode = Object.freeze({
  /** Normal closure; sent by `ChatClient.close()`. */
  NORMAL: 1000,
  /** The server shuts down (SIGTERM drain) or timed the connection out as idle. */
  GOING_AWAY: 1001,
  /** The peer broke the WebSocket protocol. */
  PROTOCOL_ERROR: 1002,
  /** No close frame: the TCP connection dropped, or the upgrade was refused. */
  ABNORMAL: 1006,
  /** A frame over the server's 64 KiB limit. */
  TOO_BIG: 1009,
  /** Service restart: come back after a randomized delay. */
  SERVICE_RESTART: 1012,
  /** Try again later; chatd sends it to a slow consumer. */
  TRY_AGAIN_LATER: 1013,
  /** Sent by this client when the server stopped answering (heartbeat or ack timeout). */
  NO_ANSWER: 4000,
  /** The token's `exp` (plus the server's grace) passed: reconnect only with a fresh token. */
  TOKEN_EXPIRED: 4001,
  /** Disconnected by an operator: reconnects with the backoff. */
  DISCONNECTED: 4002,
  /** The user is banned: never reconnected automatically. */
  BANNED: 4003,
});

/** Default reconnect settings (milliseconds). */
export const RECONNECT_DEFAULTS = Object.freeze({
  /** First backoff window. */
  baseMs: 500,
  /** Largest backoff window: the cap applies before the jitter. */
  capMs: 30_000,
  /** A connection open at least this long counts as healthy: the attempt counter restarts. */
  stableMs: 5_000,
  /** 1012 (service restart): uniform delay in [min, max], spreading the reconnect storm. */
  restartDelayMs: Object.freeze([1_000, 5_000]),
  /** 1013 (try again later): the backoff continues from at least this attempt (a 4 s window by default). */
  overloadAttempt: 3,
});

/**
 * Full-jitter backoff delay: `random(0, min(cap, base * 2^attempt))`. The
 * cap bounds the window first, then the jitter draws inside it, so delays
 * never exceed the cap and clients that failed together spread out.
 *
 * @param {number} attempt failures so far (0 for the first retry)
 * @param {{baseMs: number, capMs: number}} settings
 * @param {() => number} random uniform in [0, 1)
 * @returns {number} whole milliseconds in [0, min(cap, base * 2^attempt))
 */
export function backoffDelay(attempt, { baseMs, capMs }, random = Math.random) {
  // 2^31 times any positive base is past every sensible cap; stop there so
  // the product stays a finite number.
  const window = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 31));
  return Math.floor(random() * window);
}

/**
 * How a refused upgrade is handled, from the HTTP status the server answered
 * before the upgrade (chatd checks the token, the room id and `since` first).
 *
 * @param {number | undefined} status HTTP status, undefined when unknown
 * @returns {'auth' | 'refused' | 'retry'} `auth`: 401/403, never retried;
 *   `refused`: 400/404/426, a request that cannot succeed, never retried;
 *   `retry`: anything else (server down, 503 while draining, network).
 */
export function classifyRefusal(status) {
  if (status === 401 || status === 403) return 'auth';
  if (status === 400 || status === 404 || status === 426) return 'refused';
  return 'retry';
}

/**
 * The reconnect state of one client: the attempt counter and when the
 * current connection opened.
 */
export class Reconnector {
  /**
   * @param {Partial<typeof RECONNECT_DEFAULTS>} [settings]
   * @param {() => number} [random] uniform in [0, 1)
   */
  constructor(settings = {}, random = Math.random) {
    /** Effective settings. */
    this.settings = { ...RECONNECT_DEFAULTS, ...settings };
    /** Source of jitter (injected in tests). */
    this.random = random;
    /** Failures since the last healthy connection; sizes the next backoff window. */
    this.attempt = 0;
    /** When the current connection opened, or null while none is open. */
    this.openedAt = null;
  }

  /** The connection opened at `now` (ms). */
  opened(now) {
    this.openedAt = now;
  }

  /** Starts over, e.g. when the application connects again by hand. */
  reset() {
    this.attempt = 0;
    this.openedAt = null;
  }

  /**
   * The connection (or the attempt) ended with `code` at `now`: how long to
   * wait before the next attempt.
   *
   * - A connection that stayed open `stableMs` was healthy: the counter
   *   restarts, so a server restart after a long session is retried at once
   *   (within the first window).
   * - 1012: a uniform delay in `restartDelayMs`, not counted as a failure.
   * - 1013: the counter jumps to at least `overloadAttempt` (the server is
   *   overloaded or found us too slow: reconnecting at once would repeat it).
   * - Anything else: full-jitter backoff, and the counter grows.
   *
   * @param {number} code close code (1006 when there was none)
   * @param {number} now ms
   * @returns {{delayMs: number, attempt: number, kind: 'restart' | 'overload' | 'backoff'}}
   *   `attempt` is the counter value the delay was drawn with.
   */
  closed(code, now) {
    const s = this.settings;
    if (this.openedAt !== null && now - this.openedAt >= s.stableMs) {
      this.attempt = 0;
    }
    this.openedAt = null;
    if (code === CloseCode.SERVICE_RESTART) {
      const [min, max] = s.restartDelayMs;
      return { delayMs: Math.floor(min + this.random() * (max - min)), attempt: this.attempt, kind: 'restart' };
    }
    let kind = 'backoff';
    if (code === CloseCode.TRY_AGAIN_LATER) {
      this.attempt = Math.max(this.attempt, s.overloadAttempt);
      kind = 'overload';
    }
    const attempt = this.attempt;
    const delayMs = backoffDelay(attempt, s, this.random);
    this.attempt = attempt + 1;
    return { delayMs, attempt, kind };
  }
}
