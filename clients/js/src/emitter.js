// A minimal event emitter (the browser has EventTarget, but its events
// carry their data in `detail` and Node 20's lacks CustomEvent ergonomics;
// plain callbacks keep the client's API the same everywhere).

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} event name -> handlers */
    this.handlers = new Map();
  }

  /**
   * Calls `handler` for every `event`; returns a function that unsubscribes.
   * @param {string} event
   * @param {Function} handler
   * @returns {() => void}
   */
  on(event, handler) {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Calls `handler` for the next `event` only. */
  once(event, handler) {
    const off = this.on(event, (...args) => {
      off();
      handler(...args);
    });
    return off;
  }

  /** Removes a handler. */
  off(event, handler) {
    const set = this.handlers.get(event);
    if (set) {
      set.delete(handler);
      if (set.size === 0) this.handlers.delete(event);
    }
  }

  /**
   * Calls the handlers of `event`. A handler that throws does not stop the
   * others or the client: the error is reported on the console.
   */
  emit(event, ...args) {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (err) {
        globalThis.console?.error?.(`chatd-client: a "${event}" handler threw`, err);
      }
    }
  }
}
