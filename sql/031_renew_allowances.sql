-- Renews the allowance of every account whose period has ended by p_as_of
-- and whose role (users.role, the member row for a NULL or unknown one; a
-- team admin's for the pool, which is the admin's account) renews:
--   * the new period is the one containing p_as_of (030): an account whose
--     renewal was missed for several periods gets the current period's
--     allowance once, not one per missed period;
--   * what the ended period's allowance lots (signup, backfill, role_change,
--     renewal, rollover lots expiring at its end) still hold expires now, one
--     'expire' entry per lot, unless a sweep expired it already;
--   * the allowance: one lot of the role's credits (source 'renewal'),
--     expiring at the new period's end;
--   * the rollover: at most rollover_cap of what the ended allowance had
--     unspent at its end (whether or not a sweep ran), as one lot (source
--     'rollover') expiring with the new period; only into the period right
--     after it (after a missed period, it had lapsed during that one).
--
-- Set-based, p_limit accounts per call (all when NULL), the longest overdue
-- first; idempotent per account and period (period_ends_at moves past
-- p_as_of). Concurrency as expire_credits (028): the accounts are locked
-- first with SKIP LOCKED (one a debit holds now is left for the next run,
-- accounts_skipped), and the renewal is the next statement, which sees every
-- change committed before the locks. Two renewals running together therefore
-- never renew an account twice: the second either skips it, or locks it after
-- the first committed and finds its period renewed. p_as_of may be any time,
-- a later one included.
--
-- Errors: p_as_of NULL 22004; p_as_of infinite or from the year 9000 on
-- 22023; p_limit below 1 22023.
CREATE FUNCTION renew_allowances(
    p_as_of timestamptz DEFAULT now(),
    p_limit integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Custom plans every call: a generic plan estimates the chosen accounts at a few
-- rows and joins the statement's CTEs by nested loops, quadratic in a batch.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_accounts uuid[];
    v_skipped  integer;
    v_report   jsonb;
BEGIN
    IF p_as_of IS NULL THEN
        RAISE EXCEPTION 'p_as_of must be a time, not NULL' USING ERRCODE = '22004';
    ELSIF NOT isfinite(p_as_of) OR p_as_of >= '9000-01-01 00:00+00' THEN
        -- A period ending after it could leave the timestamp range.
        RAISE EXCEPTION 'p_as_of must be a finite time before the year 9000, not %', p_as_of
            USING ERRCODE = '22023';
    ELSIF p_limit < 1 THEN
        RAISE EXCEPTION 'p_limit must be a positive number of accounts or NULL, not %', p_limit
            USING ERRCODE = '22023';
    END IF;

    -- A busy account is skipped before the limit applies, so that a batch
    -- moves whenever a free account is due; accounts_skipped counts the busy
    -- ones among the first p_limit due.
    WITH taken AS MATERIALIZED (
        SELECT uc.user_id
        FROM public.user_credits uc
        JOIN public.users u ON u.id = uc.user_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        JOIN public.role_credits r ON r.role = coalesce(rc.role, 'member')
        WHERE uc.period_ends_at <= p_as_of AND r.renewal_interval IS NOT NULL
        ORDER BY uc.period_ends_at, uc.user_id
        LIMIT p_limit
        FOR NO KEY UPDATE OF uc SKIP LOCKED
    ), due AS (
        SELECT uc.user_id
        FROM public.user_credits uc
        JOIN public.users u ON u.id = uc.user_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        JOIN public.role_credits r ON r.role = coalesce(rc.role, 'member')
        WHERE uc.period_ends_at <= p_as_of AND r.renewal_interval IS NOT NULL
        ORDER BY uc.period_ends_at, uc.user_id
        LIMIT p_limit
    )
    -- NOT EXISTS, not NOT IN: an anti-join; NOT IN (subquery) is hashed only
    -- while the hash fits in work_mem, else rescanned per row (quadratic).
    SELECT coalesce((SELECT array_agg(t.user_id) FROM taken t), '{}'),
           (SELECT count(*) FROM due d
            WHERE NOT EXISTS (SELECT FROM taken t WHERE t.user_id = d.user_id))
    INTO v_accounts, v_skipped;

    -- One statement: the ended periods' allowance lots expire what they still
    -- hold, the new period's allowance and rollover come, and each balance is
    -- updated once. The entries are written in the order of two statements:
    -- every expiry (by account, lot), then every credit (by account, renewal
    -- before rollover). What the ended allowance had unspent at its end,
    -- amount - taken - expired + expired_unspent, is read before the expiry,
    -- which leaves it unchanged (030).
    WITH chosen AS MATERIALIZED (
        SELECT uc.user_id, uc.period_ends_at AS ended_at, uc.created_at
        -- Joins, not "= ANY (v_accounts)": planned as a filter, a large array
        -- is searched once per row.
        FROM unnest(v_accounts) AS c(user_id)
        JOIN public.user_credits uc ON uc.user_id = c.user_id
        WHERE uc.period_ends_at <= p_as_of
    ), allowance_lots AS MATERIALIZED (
        SELECT l.id, l.user_id, l.amount - l.taken - l.expired AS left_over,
               l.amount - l.taken - l.expired + l.expired_unspent AS unspent
        FROM chosen c
        JOIN public.credit_lots l
          ON l.user_id = c.user_id AND l.expires_at = c.ended_at
         AND l.source IN ('signup', 'backfill', 'role_change', 'renewal', 'rollover')
    ), ended AS MATERIALIZED (
        SELECT a.id, a.user_id, a.left_over FROM allowance_lots a WHERE a.left_over > 0
    ), expired_lots AS (
        UPDATE public.credit_lots l
        SET expired = l.expired + e.left_over, expired_unspent = l.expired_unspent + e.left_over
        FROM ended e
        WHERE l.id = e.id
    ), per_account AS MATERIALIZED (
        SELECT c.user_id, c.ended_at, coalesce(s.expired, 0) AS expired,
               r.credits, p.ends_at,
               CASE WHEN r.credits IS NULL THEN 0
                    WHEN c.ended_at >= p.starts_at
                    THEN least(r.rollover_cap, coalesce(s.unspent, 0))::integer
                    ELSE 0 END AS rollover
        FROM chosen c
        LEFT JOIN (SELECT a.user_id,
                          sum(a.left_over) FILTER (WHERE a.left_over > 0)::integer AS expired,
                          sum(a.unspent) AS unspent
                   FROM allowance_lots a GROUP BY a.user_id) s ON s.user_id = c.user_id
        JOIN public.users u ON u.id = c.user_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        LEFT JOIN public.role_credits r
          ON r.role = coalesce(rc.role, 'member') AND r.renewal_interval IS NOT NULL
        LEFT JOIN LATERAL credits_internal.allowance_period(c.created_at, r.renewal_interval,
                                                            p_as_of) p ON r.credits IS NOT NULL
        WHERE r.credits IS NOT NULL OR s.expired > 0
    ), accounts AS (
        UPDATE public.user_credits uc
        SET total_credits = uc.total_credits + coalesce(a.credits, 0) + a.rollover,
            used_credits = uc.used_credits + a.expired,
            tracked_credits = uc.tracked_credits - a.expired + coalesce(a.credits, 0)
                              + a.rollover,
            period_ends_at = CASE WHEN a.credits IS NULL THEN uc.period_ends_at
                                  ELSE a.ends_at END,
            period_allowance = CASE WHEN a.credits IS NULL THEN uc.period_allowance
                                    ELSE a.credits END,
            last_updated = CASE WHEN a.credits IS NULL THEN uc.last_updated ELSE now() END
        FROM per_account a
        WHERE uc.user_id = a.user_id
    ), logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description, lot_id)
        SELECT x.user_id, x.amount, x.type, x.source, x.description, x.lot_id
        FROM (
            SELECT 1 AS phase, e.user_id, e.id AS k, -e.left_over AS amount, 'expire' AS type,
                   'expiry' AS source,
                   format('lot %s expired with its allowance period', e.id) AS description,
                   e.id AS lot_id
            FROM ended e
            UNION ALL
            SELECT 2, a.user_id, c.n, c.amount, 'credit', c.source, c.description, NULL
            FROM per_account a
            CROSS JOIN LATERAL (VALUES
                (1, a.credits, 'renewal',
                 format('allowance for the period ending %s', a.ends_at)),
                (2, a.rollover, 'rollover',
                 format('rollover of unspent allowance from the period ended %s', a.ended_at))
            ) AS c(n, amount, source, description)
            WHERE a.credits IS NOT NULL AND c.amount > 0
        ) x
        ORDER BY x.phase, x.user_id, x.k
        RETURNING id, user_id, amount, source
    ), lots AS (
        -- In the entries' order, whatever the join's plan: the renewal lot is
        -- older than the rollover lot expiring with it, so it is spent first.
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
        SELECT g.user_id, g.id, g.source, g.amount, a.ends_at
        FROM logged g
        JOIN per_account a ON a.user_id = g.user_id
        WHERE g.source IN ('renewal', 'rollover')
        ORDER BY g.id
    )
    SELECT jsonb_build_object(
        'accounts_renewed', (SELECT count(a.credits) FROM per_account a),
        'credits_renewed', (SELECT coalesce(sum(a.credits), 0) FROM per_account a),
        'credits_rolled_over', (SELECT coalesce(sum(a.rollover), 0) FROM per_account a),
        'credits_expired', (SELECT coalesce(sum(a.expired), 0) FROM per_account a),
        'accounts_skipped', v_skipped,
        'as_of', p_as_of)
    INTO v_report;

    RETURN v_report;
END
$$;

REVOKE EXECUTE ON FUNCTION renew_allowances(timestamptz, integer) FROM PUBLIC;

COMMENT ON FUNCTION renew_allowances(timestamptz, integer) IS
    'Give each account whose allowance period ended by p_as_of its role''s allowance for the current period (and the capped rollover), p_limit accounts per call; busy accounts are skipped (accounts_skipped) for the next run. Idempotent per account and period.';
