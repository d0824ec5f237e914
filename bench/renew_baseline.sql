-- Workload 8, B of the renewal: the least SQL leaving the rows
-- renew_allowances(%(as_of)s) leaves on the bench's accounts
-- (bench/renewal_users.sql, bench/renewal_spend.sql: members, a monthly
-- allowance with a rollover cap, one period ended and none missed, no sweep
-- run), in one statement:
--   * each ended allowance lot that still holds credits gets expired and
--     expired_unspent raised by what it holds, and one expire entry (source
--     expiry, the same description, lot_id);
--   * a renewal entry of the role's credits and, when the rollover is not
--     zero, a rollover entry of min(rollover_cap, what the lots held), each
--     with its lot expiring at the new period's end;
--   * the balance: total_credits, used_credits, tracked_credits,
--     period_ends_at, period_allowance, last_updated.
-- The entries are written in the function's order (every expiry by account
-- and lot, then every credit by account, renewal before rollover), so they
-- get the same ids. Simpler than the function where the setup allows it: the
-- new period ends at created_at + 2 months (in UTC), which is the function's
-- period (030) for an account opened a month and less than two before
-- as_of; period_ends_at + 1 month would differ for an account opened on the
-- 29th to 31st. What the ended allowance had unspent is what its lots hold
-- (no sweep ran, so expired_unspent is 0); the rollover goes into the period
-- right after (none was missed); the account's role is its users.role, a
-- role that renews (no member fallback: every account is a member). Nothing
-- else: no row locks taken first (the function's SKIP LOCKED pass), no
-- array of the chosen accounts, one UPDATE of each balance instead of two,
-- no report.
WITH due AS MATERIALIZED (
    SELECT uc.user_id, uc.period_ends_at AS ended_at, r.credits, r.rollover_cap,
           (uc.created_at AT TIME ZONE 'UTC' + interval '2 months') AT TIME ZONE 'UTC' AS ends_at
    FROM user_credits uc
    JOIN users u ON u.id = uc.user_id
    JOIN role_credits r ON r.role = u.role
    WHERE uc.period_ends_at <= %(as_of)s AND r.renewal_interval IS NOT NULL
), ended AS MATERIALIZED (
    SELECT l.id, l.user_id, l.amount - l.taken - l.expired AS left_over
    FROM due d
    JOIN credit_lots l
      ON l.user_id = d.user_id AND l.expires_at = d.ended_at
     AND l.source IN ('signup', 'backfill', 'role_change', 'renewal', 'rollover')
    WHERE l.taken < l.amount - l.expired
), per_account AS MATERIALIZED (
    SELECT d.user_id, d.credits, d.ends_at, d.ended_at, coalesce(e.credits, 0) AS expired,
           least(d.rollover_cap, coalesce(e.credits, 0)) AS rollover
    FROM due d
    LEFT JOIN (SELECT e.user_id, sum(e.left_over)::integer AS credits
               FROM ended e GROUP BY e.user_id) e ON e.user_id = d.user_id
), expired_lots AS (
    UPDATE credit_lots l
    SET expired = l.expired + e.left_over, expired_unspent = l.expired_unspent + e.left_over
    FROM ended e
    WHERE l.id = e.id
), accounts AS (
    UPDATE user_credits uc
    SET total_credits = uc.total_credits + a.credits + a.rollover,
        used_credits = uc.used_credits + a.expired,
        tracked_credits = uc.tracked_credits - a.expired + a.credits + a.rollover,
        period_ends_at = a.ends_at,
        period_allowance = a.credits,
        last_updated = now()
    FROM per_account a
    WHERE uc.user_id = a.user_id
), logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source, description, lot_id)
    SELECT x.user_id, x.amount, x.type, x.source, x.description, x.lot_id
    FROM (
        SELECT 1 AS phase, e.user_id, e.id AS k, -e.left_over AS amount, 'expire' AS type,
               'expiry' AS source,
               format('lot %%s expired with its allowance period', e.id) AS description,
               e.id AS lot_id
        FROM ended e
        UNION ALL
        SELECT 2, a.user_id, c.n, c.amount, 'credit', c.source, c.description, NULL
        FROM per_account a
        CROSS JOIN LATERAL (VALUES
            (1, a.credits, 'renewal',
             format('allowance for the period ending %%s', a.ends_at)),
            (2, a.rollover, 'rollover',
             format('rollover of unspent allowance from the period ended %%s', a.ended_at))
        ) AS c(n, amount, source, description)
        WHERE c.amount > 0
    ) x
    ORDER BY x.phase, x.user_id, x.k
    RETURNING id, user_id, amount, source
)
INSERT INTO credit_lots (user_id, log_id, source, amount, expires_at)
SELECT g.user_id, g.id, g.source, g.amount, a.ends_at
FROM logged g
JOIN per_account a ON a.user_id = g.user_id
WHERE g.source IN ('renewal', 'rollover')
