-- Workload 4, B: the bare conditional UPDATE of the one pool row and the log
-- INSERT naming the member as actor.
\set m random(1, 4)
WITH d AS (
    UPDATE user_credits
    SET used_credits = used_credits + 1, last_updated = now()
    WHERE user_id = (SELECT id FROM bench_pool) AND remaining_credits >= 1
    RETURNING user_id
)
INSERT INTO credit_usage_log (user_id, actor_user_id, amount, type, source)
SELECT user_id, (SELECT id FROM bench_ids WHERE n = :m), -1, 'debit', 'usage' FROM d;
