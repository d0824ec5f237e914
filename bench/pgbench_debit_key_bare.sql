-- Workload 3 with a key, bare: the key is stored (and the unique index on
-- (user_id, idempotency_key) maintained); no replay lookup, no advisory lock.
\set n random(1, :accounts)
\set k random(1, 1000000000)
WITH d AS (
    UPDATE user_credits
    SET used_credits = used_credits + 1, last_updated = now()
    WHERE user_id = (SELECT id FROM bench_ids WHERE n = :n) AND remaining_credits >= 1
    RETURNING user_id
)
INSERT INTO credit_usage_log (user_id, amount, type, source, idempotency_key)
SELECT user_id, -1, 'debit', 'usage', cast(:client_id AS text) || '-' || cast(:k AS text)
FROM d;
