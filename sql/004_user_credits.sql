-- One balance per account. remaining_credits is derived, never written, so it
-- cannot disagree with total and used; the CHECKs make an overdraft or a
-- negative grant impossible whatever code path writes the row.
--
-- An account is one life of a user id. When a user is deleted their balance
-- row goes with them while their log entries stay (the audit trail); a user
-- re-created with the same id opens a new account. opened_after_log_id tells
-- the two lives apart without touching the log: every entry of this account
-- was written after the row was inserted, so its id is above the value drawn
-- from the log's sequence at that moment, and every entry of an earlier life
-- was written before the deletion committed, so its id is below it. The
-- account's entries are therefore exactly
--     credit_usage_log.user_id = user_id AND credit_usage_log.id > opened_after_log_id.
--
-- allocated_credits is the largest role allocation the account has been given
-- (signup, backfill, role change): what a role change may raise it to is the
-- new role's allocation minus this, never less than nothing, so demoting never
-- claws back and promoting back to a role held before adds nothing.
--
-- The foreign key takes a SHARE ROW EXCLUSIVE lock on the host's users table
-- for the instant of this CREATE TABLE (nothing to scan: the table is new);
-- writes to users wait that long, reads never do.
CREATE TABLE user_credits (
    user_id             uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    total_credits       integer NOT NULL
                        CONSTRAINT user_credits_total_nonnegative CHECK (total_credits >= 0),
    used_credits        integer NOT NULL DEFAULT 0
                        CONSTRAINT user_credits_used_nonnegative CHECK (used_credits >= 0),
    remaining_credits   integer GENERATED ALWAYS AS (total_credits - used_credits) STORED,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_updated        timestamptz NOT NULL DEFAULT now(),
    allocated_credits   integer NOT NULL DEFAULT 0
                        CONSTRAINT user_credits_allocated_nonnegative CHECK (allocated_credits >= 0),
    opened_after_log_id bigint NOT NULL,
    CONSTRAINT user_credits_remaining_nonnegative CHECK (used_credits <= total_credits)
);

COMMENT ON TABLE user_credits IS
    'Balance per account; remaining_credits = total_credits - used_credits = sum(amount) of the account''s entries (credit_usage_log.id > opened_after_log_id).';
COMMENT ON COLUMN user_credits.allocated_credits IS
    'The largest role allocation this account has been given: the sum of its signup, backfill and role_change credits.';
COMMENT ON COLUMN user_credits.opened_after_log_id IS
    'Every entry of this account has a larger credit_usage_log.id; smaller ids with the same user_id belong to an earlier, deleted account.';
