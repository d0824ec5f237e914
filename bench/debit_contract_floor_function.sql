-- Workload 3, the floor under the debit *contract*: the least functions that
-- still keep what every successful own-account debit must keep (issues 3 and 4),
-- and nothing else:
--   * the result is the documented jsonb object (issue 3);
--   * the function runs as its owner with search_path = pg_catalog, pg_temp and
--     every object of ours qualified public. (revision 0007: only the owner may
--     write the balance and log tables, and nothing anyone creates in public may
--     be picked instead of ours, pg_has_role included);
--   * a caller who is not a credits_admin member may debit only its own account
--     (credits_internal.current_user_id(), which debit_credits() calls: the
--     body behind public.credits_current_user_id()).
-- No argument checks, no team pool, no diagnosis of a refusal, no replay of a
-- keyed call: those run only when the hot path refuses, and the bench never
-- takes them. The keyed floor adds what a keyed call cannot skip even when the
-- key is new, all in the debit's statement after the lock (revision 0007):
--   * the advisory lock on (caller, key) that serialises racing retries;
--   * the lookup of the caller's key in credit_idempotency_keys (owner = the
--     caller, operation 'debit'): one primary-key probe;
--   * the key row itself (owner, 'debit', key, log id), inserted with the log
--     row. Its ON CONFLICT DO NOTHING stays: a twin that committed after this
--     call's snapshot (at REPEATABLE READ or SERIALIZABLE, e.g. one that went to
--     a team pool, so no balance row conflict stops it first) then raises the
--     documented 40001 instead of an undocumented 23505. The result's log_id is
--     the key row's, as in debit_credits(), so no entry is answered without its key.
--
-- debit_credits() next to these floors shows what its own code costs beyond
-- the contract; these floors next to the bare statement show what the contract
-- costs (docs/performance.md). Bench-only: never installed by credits-db;
-- tests/bench/test_bench.py checks they return and write what debit_credits() does.
CREATE FUNCTION bench_debit_contract_floor(p_user_id uuid, p_amount integer) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
    WITH debited AS (
        UPDATE public.user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
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
    RETURN v_result;
END
$$;

CREATE FUNCTION bench_debit_key_contract_floor(p_user_id uuid, p_amount integer, p_key text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(
        'credits_db.idempotency:' || p_user_id::text || ':' || p_key, 0::bigint));
    WITH earlier AS (
        SELECT k.log_id FROM public.credit_idempotency_keys k
        WHERE k.owner_user_id = p_user_id AND k.operation = 'debit'
          AND k.idempotency_key = p_key
    ), debited AS (
        UPDATE public.user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
          AND NOT EXISTS (SELECT FROM earlier)
        RETURNING remaining_credits
    ), logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, idempotency_key)
        SELECT p_user_id, -p_amount, 'debit', 'usage', p_key FROM debited
        RETURNING id
    ), keyed AS (
        INSERT INTO public.credit_idempotency_keys
            (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
        SELECT p_user_id, 'debit', p_key, logged.id, debited.remaining_credits
        FROM logged, debited
        ON CONFLICT DO NOTHING
        RETURNING log_id
    )
    SELECT jsonb_build_object(
               'log_id', keyed.log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
               'amount', p_amount, 'remaining_credits', debited.remaining_credits,
               'from_team_pool', false, 'replayed', false)
    INTO v_result
    FROM keyed, debited;
    RETURN v_result;
END
$$;
