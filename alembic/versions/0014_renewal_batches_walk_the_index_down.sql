-- credits-db 0014 down: back to 0013, the period index on period_ends_at alone.
DROP INDEX user_credits_period_ends_idx;
CREATE INDEX user_credits_period_ends_idx
    ON user_credits (period_ends_at)
    WHERE period_ends_at IS NOT NULL;
