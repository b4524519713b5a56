// Test doubles for the client's unit tests: a clock whose timers fire only
// when the test advances time, and a WebSocket that records what the client
// sends and lets the test play the server.

/** A manual clock: `advance(ms)` runs the timers that fall due, in order. */
export class FakeClock {
  constructor(start = 1_000_000) {
    /** Current time (ms). */
    this.t = start;
    /** Next timer id. */
    this.seq = 0;
    /** @type {Map<number, {at: number, fn: Function}>} pending timers */
    this.timers = new Map();
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Pending timers' due times, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.at).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms`, running every timer due on the way. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }

  /** The clock object the client takes. */
  api() {
    return {
      now: () => this.now(),
      setTimeout: (fn, ms) => this.setTimeout(fn, ms),
      clearTimeout: (id) => this.clearTimeout(id),
    };
  }
}

/** Builds a fake WebSocket class; every instance is recorded in `sockets`. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      /** The URL the client opened. */
      this.url = url;
      /** 0 connecting, 1 open, 3 closed. */
      this.readyState = 0;
      /** Parsed frames the client sent. */
      this.sent = [];
      /** @type {Record<string, Function[]>} */
      this.listeners = {};
      /** Close code the client asked for, if it closed. */
      this.closedWith = null;
      sockets.push(this);
    }
    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    }
    fire(type, ev = {}) {
      for (const fn of this.listeners[type] ?? []) fn(ev);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      this.closedWith = code ?? 1000;
      this.readyState = 3;
    }
    // ---- the test plays the server ----
    serverOpen(roomId) {
      this.readyState = 1;
      this.fire('open');
      if (roomId) this.serverSend({ type: 'room_joined', roomId, memberCount: 1 });
    }
    serverSend(frame) {
      this.fire('message', { data: JSON.stringify(frame) });
    }
    serverClose(code = 1006, reason = '') {
      this.readyState = 3;
      this.fire('close', { code, reason });
    }
    /** Frames of one type the client sent. */
    sentOfType(type) {
      return this.sent.filter((f) => f.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

/** A ULID-shaped message id with sortable `n`. */
export function mid(n) {
  return `01J${String(n).padStart(23, '0')}`;
}

/** Lets pending promise callbacks run (the refusal probe is async). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}
