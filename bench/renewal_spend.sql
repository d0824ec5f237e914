-- Workload 8 (issue 16), part of the allowances spent, in bulk: the accounts
-- in user_id order spend, by turns, nothing, 100 credits, all but 50, and
-- everything of their signup lot, each as one debit_credits(id, amount)
-- writes it on an account whose only lot is that one (the balance's
-- used_credits, tracked_credits and last_updated, the lot's taken, a debit
-- entry, source usage, and its credit_lot_takes row), so that
-- verify_credit_integrity() stays empty (tests/bench checks it, and that
-- debit_credits() leaves the same rows). The renewal then expires 350, 250,
-- 50 or nothing of the ended allowance and rolls over min(cap, that). One
-- statement instead of a debit_credits() call per account: at 1,000,000
-- accounts the calls would take minutes of setup.
WITH planned AS MATERIALIZED (
    SELECT l.user_id, l.id AS lot_id,
           CASE (row_number() OVER (ORDER BY l.user_id)) %% 4
               WHEN 0 THEN 0 WHEN 1 THEN 100 WHEN 2 THEN l.amount - 50 ELSE l.amount
           END::integer AS amount
    FROM credit_lots l
    WHERE l.source = 'signup'
), spending AS MATERIALIZED (
    SELECT * FROM planned WHERE amount > 0
), accounts AS (
    UPDATE user_credits uc
    SET used_credits = uc.used_credits + s.amount,
        tracked_credits = uc.tracked_credits - s.amount,
        last_updated = now()
    FROM spending s
    WHERE uc.user_id = s.user_id
), lots AS (
    UPDATE credit_lots l SET taken = l.taken + s.amount
    FROM spending s
    WHERE l.id = s.lot_id
), logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source)
    SELECT s.user_id, -s.amount, 'debit', 'usage' FROM spending s ORDER BY s.user_id
    RETURNING id, user_id, amount
)
INSERT INTO credit_lot_takes (log_id, lot_id, amount)
SELECT g.id, s.lot_id, -g.amount
FROM logged g
JOIN spending s ON s.user_id = g.user_id
