-- One balance per account. remaining_credits is derived, never written, so it
-- cannot disagree with total and used; the CHECKs make an overdraft or a
-- negative grant impossible whatever code path writes the row.
--
-- The foreign key takes a SHARE ROW EXCLUSIVE lock on the host's users table
-- for the instant of this CREATE TABLE (nothing to scan: the table is new);
-- writes to users wait that long, reads never do.
CREATE TABLE user_credits (
    user_id           uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    total_credits     integer NOT NULL
                      CONSTRAINT user_credits_total_nonnegative CHECK (total_credits >= 0),
    used_credits      integer NOT NULL DEFAULT 0
                      CONSTRAINT user_credits_used_nonnegative CHECK (used_credits >= 0),
    remaining_credits integer GENERATED ALWAYS AS (total_credits - used_credits) STORED,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_updated      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_credits_remaining_nonnegative CHECK (used_credits <= total_credits)
);

COMMENT ON TABLE user_credits IS
    'Balance per account; remaining_credits = total_credits - used_credits = sum(credit_usage_log.amount).';
