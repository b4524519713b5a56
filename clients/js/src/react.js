// useChat: the React hook of the original service description (messages,
// isConnected, sendMessage), plus typing and presence, on ChatClient.
// Plain ES module; React is a peer dependency imported by the caller's
// bundler (no build step here).

import { useCallback, useEffect, useRef, useState } from 'react';

import { ChatClient, ChatError, DEFAULT_ROOM } from './client.js';
import { mergeMessages } from './messages.js';
import { TypingTracker } from './typing.js';

/** Messages per history page (the first one is loaded on join). */
export const HOOK_PAGE = 50;

/**
 * Chat in one room.
 *
 * The client connects on mount and whenever `token`, `roomId` or
 * `options.url` change, and closes on unmount. It reconnects by itself;
 * `messages` never has a gap or a duplicate (rejoin with `since`, merge by
 * `messageId`). `sendMessage` queues while disconnected.
 *
 * @param {string | (() => string | Promise<string>)} token
 * @param {string} [roomId]
 * @param {Omit<import('./index.js').ChatClientOptions, 'token' | 'roomId' | 'rooms'>} [options]
 * @returns {import('./react.js').UseChatResult}
 */
export function useChat(token, roomId = DEFAULT_ROOM, options = {}) {
  const [messages, setMessages] = useState([]);
  const [connectionState, setConnectionState] = useState('idle');
  const [typingUsers, setTypingUsers] = useState([]);
  const [onlineUsers, setOnlineUsers] = useState([]);
  const [hasMore, setHasMore] = useState(true);
  const [error, setError] = useState(null);
  const clientRef = useRef(null);
  const messagesRef = useRef(messages);
  messagesRef.current = messages;
  // The latest options without reconnecting on every render (callers pass
  // object literals); only the URL is a reason to reconnect.
  const optionsRef = useRef(options);
  optionsRef.current = options;

  useEffect(() => {
    const opts = optionsRef.current;
    const client = new ChatClient({ ...opts, token, roomId });
    clientRef.current = client;
    setMessages([]);
    setTypingUsers([]);
    setOnlineUsers([]);
    setHasMore(true);
    setError(null);
    setConnectionState(client.state);
    const tracker = new TypingTracker(opts.typing);
    let typingTimer = null;
    let loaded = false;
    let disposed = false;

    // Indicators expire on their own (a stop can be lost): re-render then.
    const showTyping = () => {
      clearTimeout(typingTimer);
      const now = Date.now();
      setTypingUsers(tracker.typing(roomId, now));
      const next = tracker.nextExpiry(roomId);
      if (next !== null) typingTimer = setTimeout(showTyping, Math.max(0, next - now) + 10);
    };
    const here = (frame) => frame.roomId === roomId;
    // Ids an operator deleted: dropped now, and kept out of anything merged
    // later (a history page read before the delete).
    const deleted = new Set();
    const merge = (prev, incoming) =>
      mergeMessages(
        prev,
        deleted.size ? incoming.filter((m) => !deleted.has(m.messageId)) : incoming,
      );

    const offs = [
      client.on('state', ({ state }) => setConnectionState(state)),
      client.on('message', (m) => {
        if (!here(m)) return;
        setMessages((prev) => merge(prev, [m]));
        tracker.remove(roomId, m.userId);
        showTyping();
      }),
      client.on('message_deleted', (d) => {
        if (!here(d)) return;
        deleted.add(d.messageId);
        setMessages((prev) =>
          prev.some((m) => m.messageId === d.messageId) ? prev.filter((m) => m.messageId !== d.messageId) : prev,
        );
      }),
      client.on('typing_indicator', (t) => {
        if (!here(t)) return;
        tracker.update(t, Date.now());
        showTyping();
      }),
      client.on('presence', (p) => {
        if (!here(p)) return;
        setOnlineUsers((prev) =>
          p.status === 'online'
            ? prev.includes(p.userId)
              ? prev
              : [...prev, p.userId].sort()
            : prev.filter((u) => u !== p.userId),
        );
        if (p.status === 'offline') {
          tracker.remove(roomId, p.userId);
          showTyping();
        }
      }),
      client.on('room_joined', (f) => {
        if (!here(f)) return;
        // Fetched on every join: presence frames only report changes, and
        // some may have been missed while disconnected.
        client
          .presence(roomId)
          .then(({ online }) => {
            if (!disposed) setOnlineUsers([...online].sort());
          })
          .catch(() => {});
        if (loaded) return; // after a reconnect the `since` replay fills the gap
        client
          .history(roomId, { limit: HOOK_PAGE })
          .then((page) => {
            loaded = true;
            if (disposed) return;
            setMessages((prev) => merge(prev, page.messages));
            setHasMore(page.messages.length >= HOOK_PAGE);
          })
          .catch(() => {}); // disconnected: the next join loads it
      }),
      client.on('auth_failed', (e) => setError(new ChatError('auth_failed', e.error || 'the token was refused', { status: e.status }))),
      client.on('refused', (e) => setError(new ChatError('refused', e.error || 'the request was refused', { status: e.status }))),
      client.on('send_failed', (f) => setError(new ChatError(f.code, f.message, { clientMsgId: f.clientMsgId }))),
    ];
    client.connect();
    return () => {
      disposed = true;
      for (const off of offs) off();
      clearTimeout(typingTimer);
      client.close();
      if (clientRef.current === client) clientRef.current = null;
    };
  }, [token, roomId, options.url]);

  const sendMessage = useCallback(
    (content) => {
      const client = clientRef.current;
      if (!client) return Promise.reject(new ChatError('closed', 'not mounted'));
      return client.send(content, roomId);
    },
    [roomId],
  );

  const setTyping = useCallback((isTyping = true) => clientRef.current?.typing(roomId, isTyping) ?? false, [roomId]);

  const loadOlder = useCallback(async () => {
    const client = clientRef.current;
    const oldest = messagesRef.current[0]?.messageId;
    if (!client || !oldest) return 0;
    const page = await client.history(roomId, { before: oldest, limit: HOOK_PAGE });
    setMessages((prev) => mergeMessages(prev, page.messages));
    setHasMore(page.messages.length >= HOOK_PAGE);
    return page.messages.length;
  }, [roomId]);

  return {
    messages,
    isConnected: connectionState === 'open',
    connectionState,
    sendMessage,
    typingUsers,
    setTyping,
    onlineUsers,
    loadOlder,
    hasMore,
    error,
    client: clientRef.current,
  };
}
