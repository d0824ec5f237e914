-- Workload 7, C (a floor, no target): a debit of 1 from one expiring lot (the accounts of pgbench_lot_one_bare.sql)
-- by the package's own lot statement, the one credits_internal.take_from_lots()
-- runs (sql/027_lot_spending.sql: open lots in spending order, the takes
-- planned by a running sum, the lots, balance, entry and takes written, the
-- jsonb result), sent bare: no function, no permission or argument check, no
-- failed hot-path UPDATE before it, no row lock taken first (the untracked
-- credits are read in the statement). A's distance from C is what the PL/pgSQL
-- around the statement costs; C's from B what choosing the lots costs.
\set n random(1, :accounts)
WITH acct AS MATERIALIZED (
    SELECT b.id AS user_id, uc.remaining_credits - uc.tracked_credits AS untracked
    FROM bench_ids b JOIN user_credits uc ON uc.user_id = b.id
    WHERE b.n = :n
), open_lots AS (
    SELECT l.id, l.amount - l.taken - l.expired AS available, l.priority, l.expires_at
    FROM credit_lots l
    WHERE l.user_id = (SELECT user_id FROM acct) AND l.tracked AND l.taken < l.amount - l.expired
      AND (l.expires_at IS NULL OR l.expires_at > statement_timestamp())
    UNION ALL
    SELECT NULL::bigint, a.untracked, 50, NULL::timestamptz FROM acct a WHERE a.untracked > 0
), ordered AS (
    SELECT o.id, o.available,
           sum(o.available) OVER (ORDER BY o.priority, o.expires_at NULLS LAST, o.id
                                  ROWS UNBOUNDED PRECEDING) - o.available AS before
    FROM open_lots o
), plan AS MATERIALIZED (
    SELECT o.id, least(o.available, 1 - o.before)::integer AS take
    FROM ordered o WHERE o.before < 1
), enough AS MATERIALIZED (
    SELECT coalesce(sum(p.take), 0) = 1 AS ok,
           coalesce(sum(p.take) FILTER (WHERE p.id IS NOT NULL), 0)::integer AS tracked_take
    FROM plan p
), lots AS (
    UPDATE credit_lots l SET taken = l.taken + p.take
    FROM plan p, enough e
    WHERE e.ok AND l.id = p.id
), debited AS (
    UPDATE user_credits uc
    SET used_credits = uc.used_credits + 1,
        tracked_credits = uc.tracked_credits - e.tracked_take,
        last_updated = now()
    FROM enough e
    WHERE e.ok AND uc.user_id = (SELECT user_id FROM acct)
    RETURNING uc.remaining_credits
), logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source)
    SELECT (SELECT user_id FROM acct), -1, 'debit', 'usage'
    FROM debited
    RETURNING id
), took AS (
    INSERT INTO credit_lot_takes (log_id, lot_id, amount)
    SELECT g.id, p.id, p.take FROM logged g, plan p WHERE p.id IS NOT NULL
)
SELECT jsonb_build_object(
           'log_id', x.log_id, 'account_user_id', (SELECT user_id FROM acct),
           'actor_user_id', NULL, 'amount', 1, 'remaining_credits', x.remaining,
           'from_team_pool', false, 'replayed', false)
FROM (SELECT (SELECT id FROM logged) AS log_id,
             (SELECT remaining_credits FROM debited) AS remaining) AS x;
