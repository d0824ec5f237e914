-- Workload 7, the floors under the lot debit's *contract* (no target; issue 16):
-- the least functions that still keep what a debit of an account holding
-- tracked lots must keep, and nothing else:
--   * the permission check, SECURITY DEFINER and the pinned search_path of
--     bench/debit_contract_floor_function.sql (issue 3, revision 0007);
--   * the balance row locked before the lots are read (sql/027_lot_spending.sql):
--     at READ COMMITTED a lot read in the lock's own statement would come from
--     the snapshot taken before a lock wait, and a writer holding only the lock
--     leaves no row version to recheck, so the lock is a statement of its own;
--   * then one statement choosing the lots in spending order (priority, soonest
--     expiry, oldest, the untracked credits as one lot) and writing the lots,
--     the balance, the entry and its takes: take_from_lots()'s general
--     statement without its key CTE.
-- With p_hot, the function first runs the hot path's UPDATE, as debit_credits()
-- does: an account without tracked credits is debited by that one statement
-- with no query before it (the 0.95 target), so on a tracked account it finds
-- tracked_credits > 0 and writes nothing. No argument checks, no probe, no
-- nested call, no lapsed-credit test on the lock, no one-place statement.
-- Bench-only: never installed by credits-db; tests/bench/test_bench.py checks
-- they write what debit_credits() does.
CREATE FUNCTION bench_lot_span_floor(p_user_id uuid, p_amount integer, p_hot boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_untracked integer;
    v_result    jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
    IF p_hot THEN
        WITH debited AS (
            UPDATE public.user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount AND tracked_credits = 0
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO public.credit_usage_log (user_id, amount, type, source)
            SELECT p_user_id, -p_amount, 'debit', 'usage' FROM debited
            RETURNING id
        )
        SELECT jsonb_build_object(
                   'log_id', logged.id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                   'amount', p_amount, 'remaining_credits', debited.remaining_credits,
                   'from_team_pool', false, 'replayed', false)
        INTO v_result
        FROM logged, debited;
        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;
    END IF;
    SELECT uc.remaining_credits - uc.tracked_credits INTO v_untracked
    FROM public.user_credits uc
    WHERE uc.user_id = p_user_id AND uc.remaining_credits >= p_amount
    FOR NO KEY UPDATE OF uc;
    WITH open_lots AS (
        SELECT l.id, l.amount - l.taken - l.expired AS available, l.priority, l.expires_at
        FROM public.credit_lots l
        WHERE l.user_id = p_user_id AND l.tracked AND l.taken < l.amount - l.expired
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
        WHERE e.ok AND uc.user_id = p_user_id
        RETURNING uc.remaining_credits
    ), logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source)
        SELECT p_user_id, -p_amount, 'debit', 'usage' FROM debited
        RETURNING id
    ), took AS (
        INSERT INTO public.credit_lot_takes (log_id, lot_id, amount)
        SELECT g.id, p.id, p.take FROM logged g, plan p WHERE p.id IS NOT NULL
    )
    SELECT jsonb_build_object(
               'log_id', x.log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
               'amount', p_amount, 'remaining_credits', x.remaining,
               'from_team_pool', false, 'replayed', false)
    INTO v_result
    FROM (SELECT (SELECT id FROM logged) AS log_id,
                 (SELECT remaining_credits FROM debited) AS remaining) AS x;
    RETURN v_result;
END
$$;
