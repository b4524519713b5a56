-- The operator API (contract section 8): audit records of operator actions
-- name the acting admin, and bans outlive a restart.

-- Operator actions join moderation's in the audit trail. A record of an
-- action on a user (ban, unban, disconnect) has an id of its own in
-- `message_id` and an empty `room_id`.
ALTER TABLE chat_audit DROP CONSTRAINT IF EXISTS chat_audit_action_check;
ALTER TABLE chat_audit ADD CONSTRAINT chat_audit_action_check CHECK (action IN
    ('masked', 'blocked', 'published', 'deleted', 'banned', 'unbanned', 'disconnected'));
-- The admin who acted (the token's user id); NULL for moderation's records.
ALTER TABLE chat_audit ADD COLUMN IF NOT EXISTS actor text;
-- When a ban ends (for 'banned' records).
ALTER TABLE chat_audit ADD COLUMN IF NOT EXISTS until timestamptz;

-- One row per banned user; a new ban replaces the old one, lifting it
-- deletes the row. Loaded at start-up (rows whose `until` has passed are
-- ignored).
CREATE TABLE IF NOT EXISTS chat_bans (
    user_id    text        PRIMARY KEY,
    until      timestamptz NOT NULL,
    reason     text,
    actor      text        NOT NULL,
    created_at timestamptz NOT NULL
);
