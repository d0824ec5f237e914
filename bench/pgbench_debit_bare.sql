-- Workload 3, B: the bare conditional UPDATE and the log INSERT, one statement,
-- the same account lookup. The same durable work as the function's hot path
-- (last_updated included).
\set n random(1, :accounts)
WITH d AS (
    UPDATE user_credits
    SET used_credits = used_credits + 1, last_updated = now()
    WHERE user_id = (SELECT id FROM bench_ids WHERE n = :n) AND remaining_credits >= 1
    RETURNING user_id
)
INSERT INTO credit_usage_log (user_id, amount, type, source)
SELECT user_id, -1, 'debit', 'usage' FROM d;
