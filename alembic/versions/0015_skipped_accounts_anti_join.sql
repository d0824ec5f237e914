-- credits-db 0015: the busy accounts that expire_credits() and renew_allowances()
-- skipped are counted by an anti-join (frozen; see sql/ for current definitions).
-- Both counted them with "user_id NOT IN (SELECT user_id FROM taken)". PostgreSQL
-- hashes a NOT IN subquery only while the hash fits in work_mem; past that it
-- rescans the subquery for every row: with the default 4MB, one call over every
-- due lot of a million (or a million due accounts) compared each with each, and
-- ran for more than 40 minutes where 100,000 took 2 s (docs/performance.md,
-- "Revision 0015"). NOT EXISTS plans as a hash anti-join, which spills to disk
-- instead. user_id is never NULL there, so the count is the same.
-- renew_allowances() also inserts the new lots in their entries' order: without
-- an ORDER BY their ids followed the join's plan, and from about 8 accounts a call
-- (a hash join, PostgreSQL 15) an account's rollover lot got the lower id, so it,
-- not the renewal lot expiring with it, was "oldest" and spent first. Now the
-- renewal lot is always spent first. Same locks otherwise; privileges and
-- comments as before.

-- ---- 028_expire_credits.sql ----
CREATE OR REPLACE FUNCTION expire_credits(
    p_as_of timestamptz DEFAULT now(),
    p_limit integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lots    bigint[];
    v_skipped integer;
    v_report  jsonb;
BEGIN
    IF p_as_of IS NULL THEN
        RAISE EXCEPTION 'p_as_of must be a time, not NULL' USING ERRCODE = '22004';
    ELSIF p_limit < 1 THEN
        RAISE EXCEPTION 'p_limit must be a positive number of lots or NULL, not %', p_limit
            USING ERRCODE = '22023';
    END IF;

    -- A busy account is skipped before the limit applies, so that a batch
    -- moves whenever a free account has a lot due. accounts_skipped counts the
    -- busy accounts among those of the first p_limit lots due.
    WITH taken AS MATERIALIZED (
        SELECT l.id, l.user_id
        FROM public.credit_lots l
        JOIN public.user_credits uc ON uc.user_id = l.user_id
        WHERE l.expires_at <= p_as_of AND l.taken < l.amount - l.expired
        ORDER BY l.expires_at, l.id
        LIMIT p_limit
        FOR NO KEY UPDATE OF uc SKIP LOCKED
    ), due AS (
        SELECT l.user_id
        FROM public.credit_lots l
        WHERE l.expires_at <= p_as_of AND l.taken < l.amount - l.expired
        ORDER BY l.expires_at, l.id
        LIMIT p_limit
    )
    -- NOT EXISTS, not NOT IN: an anti-join; NOT IN (subquery) is hashed only
    -- while the hash fits in work_mem, else rescanned per row (quadratic).
    SELECT coalesce((SELECT array_agg(t.id) FROM taken t), '{}'),
           (SELECT count(DISTINCT d.user_id) FROM due d
            WHERE NOT EXISTS (SELECT FROM taken t WHERE t.user_id = d.user_id))
    INTO v_lots, v_skipped;

    WITH due AS MATERIALIZED (
        SELECT l.id, l.user_id, l.amount - l.taken - l.expired AS credits, l.expires_at
        -- A join, not "= ANY (v_lots)": planned as a filter, a million-element
        -- array is searched once per row.
        FROM unnest(v_lots) AS chosen(id)
        JOIN public.credit_lots l ON l.id = chosen.id
        WHERE l.expires_at <= p_as_of AND l.taken < l.amount - l.expired
    ), lots AS (
        UPDATE public.credit_lots l
        SET expired = l.expired + d.credits, expired_unspent = l.expired_unspent + d.credits
        FROM due d WHERE l.id = d.id
    ), per_account AS MATERIALIZED (
        SELECT d.user_id, sum(d.credits)::integer AS credits FROM due d GROUP BY d.user_id
    ), accounts AS (
        UPDATE public.user_credits uc
        SET used_credits = uc.used_credits + a.credits,
            tracked_credits = uc.tracked_credits - a.credits,
            last_updated = now()
        FROM per_account a WHERE uc.user_id = a.user_id
    ), logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description, lot_id)
        SELECT d.user_id, -d.credits, 'expire', 'expiry',
               format('lot %s expired at %s', d.id, d.expires_at), d.id
        FROM due d
        ORDER BY d.expires_at, d.id
    )
    SELECT jsonb_build_object(
        'lots_expired', (SELECT count(*) FROM due),
        'credits_expired', (SELECT coalesce(sum(credits), 0) FROM due),
        'accounts', (SELECT count(*) FROM per_account),
        'accounts_skipped', v_skipped,
        'as_of', p_as_of)
    INTO v_report;
    RETURN v_report;
END
$$;

REVOKE EXECUTE ON FUNCTION expire_credits(timestamptz, integer) FROM PUBLIC;

COMMENT ON FUNCTION expire_credits(timestamptz, integer) IS
    'Expire what lots lapsed by p_as_of still hold (one expire entry per lot), p_limit lots per call; accounts busy right now are skipped (accounts_skipped) for the next run. Idempotent.';

-- ---- 031_renew_allowances.sql ----
CREATE OR REPLACE FUNCTION renew_allowances(
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

