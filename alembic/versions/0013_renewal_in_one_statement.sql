-- credits-db 0013: Renewal in one statement after the locks, its period inlined, custom plans (frozen; see sql/ for current
-- definitions).
-- The renewal of a million accounts at the bare statement's cost
-- (docs/performance.md, workload 8):
--   * credits_internal.allowance_period is inlined into the statements that
--     call it: a set-returning SQL function, not STRICT, no SET clause, with a
--     BEGIN ATOMIC body whose names are bound here, with search_path =
--     pg_catalog (so nothing in public can take an operator's place). Its
--     result type changes (OUT parameters to RETURNS TABLE), so it is dropped
--     and created again, with its privileges;
--   * renew_allowances() writes the expiry, the renewal and the rollover in one
--     statement after the locks, each balance updated once (it was two
--     statements, two updates of each balance);
--   * renew_allowances() plans each call for its own accounts
--     (plan_cache_mode = force_custom_plan): from the sixth call of a session
--     a generic plan joined its CTEs by nested loops, quadratic in a batch.
-- The same rows as before, in the same order (the bench and the tests check).

-- ---- 030_renewal.sql ----
-- Internal, called only by credits-db's own functions, which resolve it when
-- they run: created again below, in the same transaction.
-- squawk-ignore ban-drop-function
DROP FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz);
-- A BEGIN ATOMIC body binds its names now: pg_catalog's only.
SET LOCAL search_path = pg_catalog, pg_temp;
CREATE FUNCTION credits_internal.allowance_period(
    p_anchor   timestamptz,
    p_interval interval,
    p_at       timestamptz
) RETURNS TABLE (starts_at timestamptz, ends_at timestamptz)
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
BEGIN ATOMIC
    SELECT (x.a + k.k * p_interval) AT TIME ZONE 'UTC',
           (x.a + (k.k + 1) * p_interval) AT TIME ZONE 'UTC'
    FROM (SELECT p_anchor AT TIME ZONE 'UTC' AS a, p_at AT TIME ZONE 'UTC' AS t,
                 (extract(year FROM p_interval) * 12 + extract(month FROM p_interval))::bigint
                     AS months) x
    CROSS JOIN LATERAL (
        -- k exactly: by calendar months for an interval of months (the start
        -- of period k0 is then in p_at's month or the one before), else by its
        -- fixed length (in UTC a day is always 24 hours).
        SELECT CASE WHEN x.months > 0
                    THEN floor(((extract(year FROM x.t) - extract(year FROM x.a)) * 12
                                + extract(month FROM x.t) - extract(month FROM x.a))
                               / x.months)::bigint
                    ELSE floor(extract(epoch FROM x.t - x.a) / extract(epoch FROM p_interval))::bigint
               END AS k0
    ) e
    CROSS JOIN LATERAL (
        SELECT greatest(e.k0 - (x.a + e.k0 * p_interval > x.t)::integer, 0) AS k
    ) k;
END;

REVOKE EXECUTE ON FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz)
    FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz) IS
    'Internal: the allowance period [starts_at, ends_at) containing p_at, anchored on p_anchor, in UTC.';

SET LOCAL search_path = public;

-- Supabase: a function created again gets the API roles' default privileges
-- again; taken back, as 094 does.
DO $credits_period_api_roles$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('anon', 'authenticated', 'service_role')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION'
                       ' credits_internal.allowance_period(timestamptz, interval, timestamptz)'
                       ' FROM %I', v_role);
    END LOOP;
END
$credits_period_api_roles$;

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
    SELECT coalesce((SELECT array_agg(t.user_id) FROM taken t), '{}'),
           (SELECT count(*) FROM due d WHERE d.user_id NOT IN (SELECT t.user_id FROM taken t))
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
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
        SELECT g.user_id, g.id, g.source, g.amount, a.ends_at
        FROM logged g
        JOIN per_account a ON a.user_id = g.user_id
        WHERE g.source IN ('renewal', 'rollover')
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
