-- The expiry sweep: every lot whose expiry is at or before p_as_of and that
-- still holds credits gets one 'expire' entry (source 'expiry', lot_id the
-- lot) for what it holds, which leaves it empty; the balance's used_credits
-- grows by as much (used_credits counts what was spent and what expired) and
-- tracked_credits shrinks by as much. Debits never spend a lapsed lot whether
-- or not this ran: the sweep makes the ledger say so.
--
-- Set-based, in batches of p_limit lots (all when NULL), soonest expiry
-- first; idempotent, since an expired lot holds nothing more to expire. p_as_of
-- may be any time: later than now expires early (tests, a job catching up
-- with a schedule, a replay).
--
-- Concurrency: the accounts of the chosen lots are locked first, in one
-- statement, FOR NO KEY UPDATE SKIP LOCKED: an account a debit, grant or
-- refund holds right now is left for the next run (accounts_skipped), so the
-- sweep never waits on a row lock and so can never be part of a deadlock
-- (whatever order it locks in).
-- The expiry itself is the next statement, which at READ COMMITTED sees every
-- lot change committed before the locks were granted (every lot writer holds
-- its account's lock); at REPEATABLE READ and SERIALIZABLE a change committed
-- after the snapshot makes the lock fail with 40001 instead.
--
-- Errors: p_as_of NULL 22004; p_limit below 1 22023.
CREATE FUNCTION expire_credits(
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
