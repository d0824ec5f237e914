-- Workload 7, B: the least SQL leaving the rows a debit of 2 spanning two lots
-- leaves (the same accounts as pgbench_lot_span.sql): the balance (used_credits,
-- tracked_credits, last_updated), taken of the two lots, the log entry and its
-- two credit_lot_takes rows, in one statement, with the balance's conditional
-- UPDATE as in pgbench_debit_bare.sql. The lots are the ones the function
-- would choose, read from bench_ids (bench/bench_lot_ids.sql) with the account:
-- nothing is chosen, locked first or checked.
\set k :k + 1
\set n (:k - 1) * :clients + :client_id + 1
WITH a AS (
    SELECT id, lot1, lot2 FROM bench_ids WHERE n = :n
), plan (lot_id, take) AS (
    SELECT lot1, 1 FROM a UNION ALL SELECT lot2, 1 FROM a
), debited AS (
    UPDATE user_credits
    SET used_credits = used_credits + 2, tracked_credits = tracked_credits - 2,
        last_updated = now()
    WHERE user_id = (SELECT id FROM a) AND remaining_credits >= 2
    RETURNING user_id
), lots AS (
    UPDATE credit_lots l SET taken = l.taken + p.take
    FROM plan p, debited d
    WHERE l.id = p.lot_id
), logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source)
    SELECT user_id, -2, 'debit', 'usage' FROM debited
    RETURNING id
)
INSERT INTO credit_lot_takes (log_id, lot_id, amount)
SELECT g.id, p.lot_id, p.take FROM logged g, plan p;
