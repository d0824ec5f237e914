-- Workload 7, B: the least SQL leaving the rows a debit of 1 from one expiring
-- lot leaves (pgbench_debit.sql on the accounts of bench/lots_grant_one.sql):
-- the balance (used_credits, tracked_credits, last_updated), the lot's taken,
-- the log entry and its credit_lot_takes row, in one statement, with the
-- balance's conditional UPDATE as in pgbench_debit_bare.sql. The lot is read
-- from bench_ids with the account (bench/bench_lot_ids.sql): nothing is chosen,
-- locked first or checked.
\set n random(1, :accounts)
WITH a AS (
    SELECT id, lot1 FROM bench_ids WHERE n = :n
), debited AS (
    UPDATE user_credits
    SET used_credits = used_credits + 1, tracked_credits = tracked_credits - 1,
        last_updated = now()
    WHERE user_id = (SELECT id FROM a) AND remaining_credits >= 1
    RETURNING user_id
), lots AS (
    UPDATE credit_lots l SET taken = l.taken + 1
    FROM debited d
    WHERE l.id = (SELECT lot1 FROM a)
), logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source)
    SELECT user_id, -1, 'debit', 'usage' FROM debited
    RETURNING id
)
INSERT INTO credit_lot_takes (log_id, lot_id, amount)
SELECT g.id, (SELECT lot1 FROM a), 1 FROM logged g;
