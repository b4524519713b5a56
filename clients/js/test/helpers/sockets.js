// WebSocket classes for the integration tests, built on the `ws` package:
// they record every socket the client opens and let a test cut one, hide
// frames, or hide the refusal status the way a browser does.

import WebSocket from 'ws';

/**
 * @param {{hideStatus?: boolean}} [options] hideStatus: strip the HTTP
 *   status from error events, as browsers do, so the client must probe
 * @returns {{Socket: typeof WebSocket, sockets: WebSocket[], swallow: Set<string>}}
 *   `swallow`: frame types not passed to the client while listed
 */
export function recordingSockets({ hideStatus = false } = {}) {
  const sockets = [];
  const swallow = new Set();
  class Socket extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      sockets.push(this);
    }
    addEventListener(type, handler, options) {
      if (type === 'message') {
        return super.addEventListener(
          type,
          (ev) => {
            let kind;
            try {
              kind = JSON.parse(ev.data).type;
            } catch {
              kind = undefined;
            }
            if (!swallow.has(kind)) handler(ev);
          },
          options,
        );
      }
      if (type === 'error' && hideStatus) {
        return super.addEventListener(type, () => handler({ type: 'error' }), options);
      }
      return super.addEventListener(type, handler, options);
    }
  }
  return { Socket, sockets, swallow };
}

/** A clock on real timers that knows which timers are pending. */
export function trackingClock() {
  const pending = new Set();
  return {
    pending,
    now: () => Date.now(),
    setTimeout(fn, ms) {
      const id = setTimeout(() => {
        pending.delete(id);
        fn();
      }, ms);
      pending.add(id);
      return id;
    },
    clearTimeout(id) {
      pending.delete(id);
      clearTimeout(id);
    },
  };
}
