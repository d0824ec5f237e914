-- credits-db 0013 down: back to 0012. Functions as the landed
-- revisions left them (written by scripts/new_revision.py). allowance_period is
-- dropped and created again (its result type), with its privileges.

-- ---- credits_internal.allowance_period(timestamp with time zone, interval, timestamp with time zone): as revision 0011 defined it ----
DROP FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz);
CREATE FUNCTION credits_internal.allowance_period(
    p_anchor   timestamptz,
    p_interval interval,
    p_at       timestamptz,
    OUT starts_at timestamptz,
    OUT ends_at   timestamptz
)
LANGUAGE sql
IMMUTABLE
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
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
    ) k
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz)
    FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz) IS
    'Internal: the allowance period [starts_at, ends_at) containing p_at, anchored on p_anchor, in UTC.';

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

-- ---- renew_allowances(timestamp with time zone, integer): as revision 0011 defined it ----
CREATE OR REPLACE FUNCTION renew_allowances(
    p_as_of timestamptz DEFAULT now(),
    p_limit integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_accounts uuid[];
    v_skipped  integer;
    v_report   jsonb;
    v_expired  integer;
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

    -- What the ended periods' allowance lots still hold expires first, so the
    -- history reads: the old allowance expires, then the new one comes.
    WITH ended AS MATERIALIZED (
        SELECT l.id, l.user_id, l.amount - l.taken - l.expired AS left_over
        -- Joins, not "= ANY (v_accounts)": planned as a filter, a large array
        -- is searched once per row.
        FROM unnest(v_accounts) AS chosen(user_id)
        JOIN public.user_credits uc ON uc.user_id = chosen.user_id
        JOIN public.credit_lots l
          ON l.user_id = uc.user_id AND l.expires_at = uc.period_ends_at
         AND l.source IN ('signup', 'backfill', 'role_change', 'renewal', 'rollover')
        WHERE uc.period_ends_at <= p_as_of AND l.taken < l.amount - l.expired
    ), expired_lots AS (
        UPDATE public.credit_lots l
        SET expired = l.expired + e.left_over, expired_unspent = l.expired_unspent + e.left_over
        FROM ended e
        WHERE l.id = e.id
    ), per_account AS (
        SELECT e.user_id, sum(e.left_over)::integer AS credits FROM ended e GROUP BY e.user_id
    ), accounts AS (
        UPDATE public.user_credits uc
        SET used_credits = uc.used_credits + a.credits,
            tracked_credits = uc.tracked_credits - a.credits
        FROM per_account a
        WHERE uc.user_id = a.user_id
    ), logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description, lot_id)
        SELECT e.user_id, -e.left_over, 'expire', 'expiry',
               format('lot %s expired with its allowance period', e.id), e.id
        FROM ended e
        ORDER BY e.user_id, e.id
        RETURNING amount
    )
    SELECT coalesce(-sum(g.amount), 0) INTO v_expired FROM logged g;

    -- Then the new period's allowance and rollover. What the ended allowance
    -- had unspent at its end, amount - taken - expired + expired_unspent, is
    -- the same before and after its expiry was swept (030).
    WITH due AS MATERIALIZED (
        SELECT uc.user_id, uc.period_ends_at AS ended_at, r.credits, r.rollover_cap,
               p.starts_at, p.ends_at,
               coalesce((SELECT sum(l.amount - l.taken - l.expired + l.expired_unspent)
                         FROM public.credit_lots l
                         WHERE l.user_id = uc.user_id AND l.expires_at = uc.period_ends_at
                           AND l.source IN ('signup', 'backfill', 'role_change', 'renewal',
                                            'rollover')), 0) AS unspent
        FROM unnest(v_accounts) AS chosen(user_id)
        JOIN public.user_credits uc ON uc.user_id = chosen.user_id
        JOIN public.users u ON u.id = uc.user_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        JOIN public.role_credits r ON r.role = coalesce(rc.role, 'member')
        CROSS JOIN LATERAL credits_internal.allowance_period(uc.created_at, r.renewal_interval,
                                                             p_as_of) p
        WHERE uc.period_ends_at <= p_as_of AND r.renewal_interval IS NOT NULL
    ), per_account AS MATERIALIZED (
        SELECT d.user_id, d.credits, d.ends_at, d.ended_at,
               CASE WHEN d.ended_at >= d.starts_at THEN least(d.rollover_cap, d.unspent)::integer
                    ELSE 0 END AS rollover
        FROM due d
    ), accounts AS (
        UPDATE public.user_credits uc
        SET total_credits = uc.total_credits + a.credits + a.rollover,
            tracked_credits = uc.tracked_credits + a.credits + a.rollover,
            period_ends_at = a.ends_at,
            period_allowance = a.credits,
            last_updated = now()
        FROM per_account a
        WHERE uc.user_id = a.user_id
    ), credited AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT a.user_id, c.amount, 'credit', c.source, c.description
        FROM per_account a
        CROSS JOIN LATERAL (VALUES
            (1, a.credits, 'renewal',
             format('allowance for the period ending %s', a.ends_at)),
            (2, a.rollover, 'rollover',
             format('rollover of unspent allowance from the period ended %s', a.ended_at))
        ) AS c(n, amount, source, description)
        WHERE c.amount > 0
        ORDER BY a.user_id, c.n
        RETURNING id, user_id, amount, source
    ), lots AS (
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
        SELECT c.user_id, c.id, c.source, c.amount, a.ends_at
        FROM credited c
        JOIN per_account a ON a.user_id = c.user_id
    )
    SELECT jsonb_build_object(
        'accounts_renewed', (SELECT count(*) FROM per_account),
        'credits_renewed', (SELECT coalesce(sum(credits), 0) FROM per_account),
        'credits_rolled_over', (SELECT coalesce(sum(rollover), 0) FROM per_account),
        'credits_expired', v_expired,
        'accounts_skipped', v_skipped,
        'as_of', p_as_of)
    INTO v_report;

    RETURN v_report;
END
$$;

COMMENT ON FUNCTION renew_allowances(timestamptz, integer) IS
    'Give each account whose allowance period ended by p_as_of its role''s allowance for the current period (and the capped rollover), p_limit accounts per call; busy accounts are skipped (accounts_skipped) for the next run. Idempotent per account and period.';
