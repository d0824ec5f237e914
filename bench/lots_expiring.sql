-- Workload 7 (issue 16), the expiry sweep's lots, in bulk: %(per_account)s lots
-- on every account, each written as grant_credits(p_expires_at => ...) writes
-- it (a credit entry, source promo, and its lot: priority 50, an expiry), and
-- the account's total_credits and tracked_credits raised by what its lots
-- hold, so that verify_credit_integrity() stays empty (tests/bench checks
-- it, and that grant_credits() leaves the same lot and entry). Expiries fall
-- a day from now, spread over the next 24 hours by the entry's id, so the
-- sweep's order (expiry, then id) is not the insertion order alone. One
-- statement instead of a grant_credits() call per lot: at 1,000,000 lots the
-- calls would take minutes of setup.
WITH planned AS MATERIALIZED (
    SELECT uc.user_id, g, (10 + g)::integer AS amount
    FROM user_credits uc, generate_series(1, %(per_account)s) AS g
), logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source)
    SELECT p.user_id, p.amount, 'credit', 'promo' FROM planned p ORDER BY p.user_id, p.g
    RETURNING id, user_id, amount
), lots AS (
    INSERT INTO credit_lots (user_id, log_id, source, amount, expires_at)
    SELECT g.user_id, g.id, 'promo', g.amount,
           now() + interval '1 day' + (g.id %% 86400) * interval '1 second'
    FROM logged g
)
UPDATE user_credits uc
SET total_credits = uc.total_credits + s.credits,
    tracked_credits = uc.tracked_credits + s.credits,
    last_updated = now()
FROM (SELECT p.user_id, sum(p.amount)::integer AS credits FROM planned p GROUP BY p.user_id) AS s
WHERE uc.user_id = s.user_id
