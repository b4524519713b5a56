-- Message history and the moderation audit trail.

-- One row per accepted message. `payload` is the server `message` frame
-- exactly as it was broadcast (JSON text), so history reads return the same
-- bytes; `user_id` and `sent_at` are copies for operators' queries and
-- retention jobs. Message ids are ULIDs: in the "C" collation their text
-- order is their time order, which is the room's order.
CREATE TABLE IF NOT EXISTS chat_messages (
    room_id    text        NOT NULL,
    message_id text        COLLATE "C" NOT NULL,
    user_id    text        NOT NULL,
    sent_at    timestamptz NOT NULL,
    payload    text        NOT NULL,
    -- Serves every history read (a room's ids in order, either direction)
    -- and makes a retried batch insert a no-op (ON CONFLICT DO NOTHING).
    PRIMARY KEY (room_id, message_id)
);

-- One row per masked or blocked message (contract section 5).
CREATE TABLE IF NOT EXISTS chat_audit (
    message_id text        COLLATE "C" NOT NULL,
    action     text        NOT NULL CHECK (action IN ('masked', 'blocked')),
    room_id    text        NOT NULL,
    user_id    text        NOT NULL,
    reason     text,
    at         timestamptz NOT NULL,
    PRIMARY KEY (message_id, action)
);

CREATE INDEX IF NOT EXISTS chat_audit_user_at ON chat_audit (user_id, at);
