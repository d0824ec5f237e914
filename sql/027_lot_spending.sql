-- The debit of an account holding tracked lots (026): spends them in order,
-- priority (lower first), then soonest expiry (none last), then oldest, the
-- untracked credits taking their place as one lot of priority 50 without
-- expiry. A lot past its expiry is never spent, swept or not: "now" is the
-- start of the caller's statement (statement_timestamp()).
--
-- The account's row is locked before the lots are read, and every writer of
-- lots holds that lock: at READ COMMITTED the statement after the lock sees
-- every lot change committed before it; at REPEATABLE READ and SERIALIZABLE
-- a change committed after the snapshot makes the lock fail with 40001.
-- One statement then plans the takes, updates the lots and the balance,
-- writes the entry, its takes and its key, or writes nothing at all when the
-- open lots cannot pay the whole amount (the result is then NULL: debits are
-- never split between accounts, and the caller tries the team pool).
--
-- The key is its owner's (the spender, p_actor for a pool debit, else the
-- account); the caller holds the key's advisory lock, so a conflict here is
-- the impossible race debit_credits reports as 40001.
CREATE FUNCTION credits_internal.take_from_lots(
    p_account         uuid,
    p_actor           uuid,
    p_amount          integer,
    p_source          text,
    p_description     text,
    p_idempotency_key text
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_untracked integer;
    v_first     bigint;
    v_available integer;
    v_leads     boolean;
    v_result    jsonb;
    v_key_taken boolean;
BEGIN
    -- Locked only if it can pay, judged at least as strictly as the plan
    -- below does: a debit the own account refuses holds no lock on its way to
    -- the team pool (own, then pool, would deadlock with mutual pools, or with
    -- one DELETE of an admin and member). The lapsed sum here may come from a
    -- snapshot older than the locked row; every change since then moved
    -- remaining_credits down at least as much as it moved lapsed credits down
    -- (a sweep or renewal expires them), so the test never passes wrongly.
    SELECT uc.remaining_credits - uc.tracked_credits INTO v_untracked
    FROM public.user_credits uc
    WHERE uc.user_id = p_account
      AND uc.remaining_credits - coalesce((
              SELECT sum(l.amount - l.taken - l.expired) FROM public.credit_lots l
              WHERE l.user_id = uc.user_id AND l.expires_at <= statement_timestamp()
                AND l.taken < l.amount - l.expired), 0) >= p_amount
    FOR NO KEY UPDATE OF uc;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    -- Most debits take from one place: the first open tracked lot in spending
    -- order, or the untracked credits when they come first. One index probe
    -- tells, and a plain statement does it; the planning statement below is
    -- for a debit that spans lots.
    SELECT l.id, l.amount - l.taken - l.expired,
           l.priority < 50 OR (l.priority = 50 AND l.expires_at IS NOT NULL)
    INTO v_first, v_available, v_leads
    FROM public.credit_lots l
    WHERE l.user_id = p_account AND l.tracked AND l.taken < l.amount - l.expired
      AND (l.expires_at IS NULL OR l.expires_at > statement_timestamp())
    ORDER BY l.priority, l.expires_at NULLS LAST, l.id
    LIMIT 1;
    IF (v_leads AND v_available >= p_amount)
       OR ((v_leads IS NOT TRUE) AND v_untracked >= p_amount) THEN
        IF v_leads IS NOT TRUE THEN
            v_first := NULL;  -- from the untracked credits: no lot row to write
        END IF;
        WITH lot AS (
            UPDATE public.credit_lots l SET taken = l.taken + p_amount WHERE l.id = v_first
        ), debited AS (
            UPDATE public.user_credits uc
            SET used_credits = uc.used_credits + p_amount,
                tracked_credits = uc.tracked_credits
                                  - CASE WHEN v_first IS NULL THEN 0 ELSE p_amount END,
                last_updated = now()
            WHERE uc.user_id = p_account
            RETURNING uc.remaining_credits
        ), logged AS (
            INSERT INTO public.credit_usage_log
                (user_id, actor_user_id, amount, type, source, description, idempotency_key)
            SELECT p_account, p_actor, -p_amount, 'debit', p_source, p_description,
                   p_idempotency_key
            FROM debited
            RETURNING id
        ), took AS (
            INSERT INTO public.credit_lot_takes (log_id, lot_id, amount)
            SELECT g.id, v_first, p_amount FROM logged g WHERE v_first IS NOT NULL
        ), keyed AS (
            INSERT INTO public.credit_idempotency_keys
                (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
            SELECT coalesce(p_actor, p_account), 'debit', p_idempotency_key, g.id,
                   d.remaining_credits
            FROM logged g, debited d
            WHERE p_idempotency_key IS NOT NULL
            ON CONFLICT DO NOTHING
            RETURNING log_id
        )
        SELECT jsonb_build_object(
                   'log_id', x.log_id, 'account_user_id', p_account, 'actor_user_id', p_actor,
                   'amount', p_amount, 'remaining_credits', x.remaining,
                   'from_team_pool', p_actor IS NOT NULL, 'replayed', false),
               p_idempotency_key IS NOT NULL AND x.key_log_id IS NULL
        INTO v_result, v_key_taken
        FROM (SELECT (SELECT id FROM logged) AS log_id,
                     (SELECT remaining_credits FROM debited) AS remaining,
                     (SELECT log_id FROM keyed) AS key_log_id) AS x;
    ELSE
        WITH open_lots AS (
            SELECT l.id, l.amount - l.taken - l.expired AS available, l.priority, l.expires_at
            FROM public.credit_lots l
            WHERE l.user_id = p_account AND l.tracked AND l.taken < l.amount - l.expired
              AND (l.expires_at IS NULL OR l.expires_at > statement_timestamp())
            UNION ALL
            SELECT NULL::bigint, v_untracked, 50, NULL::timestamptz WHERE v_untracked > 0
        ), ordered AS (
            SELECT o.id, o.available,
                   sum(o.available) OVER (ORDER BY o.priority, o.expires_at NULLS LAST, o.id
                                          ROWS UNBOUNDED PRECEDING) - o.available AS before
            FROM open_lots o
        ), plan AS MATERIALIZED (
            SELECT o.id, least(o.available, p_amount - o.before)::integer AS take
            FROM ordered o WHERE o.before < p_amount
        ), enough AS MATERIALIZED (
            SELECT coalesce(sum(p.take), 0) = p_amount AS ok,
                   coalesce(sum(p.take) FILTER (WHERE p.id IS NOT NULL), 0)::integer AS tracked_take
            FROM plan p
        ), lots AS (
            UPDATE public.credit_lots l SET taken = l.taken + p.take
            FROM plan p, enough e
            WHERE e.ok AND l.id = p.id
        ), debited AS (
            UPDATE public.user_credits uc
            SET used_credits = uc.used_credits + p_amount,
                tracked_credits = uc.tracked_credits - e.tracked_take,
                last_updated = now()
            FROM enough e
            WHERE e.ok AND uc.user_id = p_account
            RETURNING uc.remaining_credits
        ), logged AS (
            INSERT INTO public.credit_usage_log
                (user_id, actor_user_id, amount, type, source, description, idempotency_key)
            SELECT p_account, p_actor, -p_amount, 'debit', p_source, p_description, p_idempotency_key
            FROM debited
            RETURNING id
        ), took AS (
            INSERT INTO public.credit_lot_takes (log_id, lot_id, amount)
            SELECT g.id, p.id, p.take FROM logged g, plan p WHERE p.id IS NOT NULL
        ), keyed AS (
            INSERT INTO public.credit_idempotency_keys
                (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
            SELECT coalesce(p_actor, p_account), 'debit', p_idempotency_key, g.id, d.remaining_credits
            FROM logged g, debited d
            WHERE p_idempotency_key IS NOT NULL
            ON CONFLICT DO NOTHING
            RETURNING log_id
        )
        SELECT CASE WHEN x.log_id IS NOT NULL THEN jsonb_build_object(
                   'log_id', x.log_id, 'account_user_id', p_account, 'actor_user_id', p_actor,
                   'amount', p_amount, 'remaining_credits', x.remaining,
                   'from_team_pool', p_actor IS NOT NULL, 'replayed', false) END,
               x.log_id IS NOT NULL AND p_idempotency_key IS NOT NULL AND x.key_log_id IS NULL
        INTO v_result, v_key_taken
        FROM (SELECT (SELECT id FROM logged) AS log_id,
                     (SELECT remaining_credits FROM debited) AS remaining,
                     (SELECT log_id FROM keyed) AS key_log_id) AS x;
    END IF;

    IF v_key_taken THEN
        RAISE EXCEPTION 'idempotency key % was taken by a concurrent call', p_idempotency_key
            USING ERRCODE = '40001', HINT = 'Retry the call: it will replay.';
    END IF;
    RETURN v_result;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.take_from_lots(uuid, uuid, integer, text, text, text)
    FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.take_from_lots(uuid, uuid, integer, text, text, text) IS
    'Internal: debit an account that holds tracked lots, in spending order, recording the takes; NULL when its open lots cannot pay.';

-- What an account can spend now and what expires next, from one snapshot:
-- remaining_credits less the tracked lots past their expiry that no sweep has
-- expired yet. An account without tracked credits reads no lot.
CREATE FUNCTION credits_internal.lot_summary(p_user_id uuid) RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'spendable_credits', uc.remaining_credits - coalesce(lapsed.credits, 0),
        'next_expiry', CASE WHEN upcoming.expires_at IS NOT NULL THEN jsonb_build_object(
            'expires_at', upcoming.expires_at, 'credits', upcoming.credits) END)
    FROM public.user_credits uc
    LEFT JOIN LATERAL (
        SELECT sum(l.amount - l.taken - l.expired) AS credits
        FROM public.credit_lots l
        WHERE uc.tracked_credits > 0 AND l.user_id = uc.user_id
          AND l.expires_at <= statement_timestamp() AND l.taken < l.amount - l.expired
    ) lapsed ON true
    LEFT JOIN LATERAL (
        SELECT l.expires_at, sum(l.amount - l.taken - l.expired) AS credits
        FROM public.credit_lots l
        WHERE uc.tracked_credits > 0 AND l.user_id = uc.user_id
          AND l.expires_at > statement_timestamp() AND l.taken < l.amount - l.expired
        GROUP BY l.expires_at
        ORDER BY l.expires_at
        LIMIT 1
    ) upcoming ON true
    WHERE uc.user_id = p_user_id;
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.lot_summary(uuid) FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.lot_summary(uuid) IS
    'Internal: spendable_credits (remaining less lapsed, unswept lots) and next_expiry {expires_at, credits} of one account; NULL if it has no balance row.';
