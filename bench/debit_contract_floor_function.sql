-- Workload 3, the floor under the debit *contract*: the least functions that
-- still keep what every successful own-account debit must keep (issues 3 and 4),
-- and nothing else:
--   * the result is the documented jsonb object (issue 3);
--   * the function runs as its owner with a pinned search_path, because only
--     the owner may write the balance and log tables (issue 4, the brief);
--   * a caller who is not a credits_admin member may debit only its own account.
-- No argument checks, no team pool, no diagnosis of a refusal, no replay of a
-- keyed call: those run only when the hot path refuses, and the bench never
-- takes them. The keyed floor adds what a keyed call cannot skip even when the
-- key is new: the advisory lock that serialises racing retries, and the lookup
-- of an earlier entry with the key (own account, or any pool entry the caller
-- made) in the same statement as the debit.
--
-- debit_credits() next to these floors shows what its own code costs beyond
-- the contract; these floors next to the bare statement show what the contract
-- costs (docs/performance.md). Bench-only: never installed by credits-db;
-- tests/test_bench.py checks they return what debit_credits() returns.
CREATE FUNCTION bench_debit_contract_floor(p_user_id uuid, p_amount integer) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin', 'MEMBER')
       AND (p_user_id = credits_current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
    WITH debited AS (
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
        RETURNING remaining_credits
    ), logged AS (
        INSERT INTO credit_usage_log (user_id, amount, type, source)
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
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin', 'MEMBER')
       AND (p_user_id = credits_current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(
        'credits_db.idempotency:' || p_user_id::text || ':' || p_key, 0));
    WITH earlier AS (
        SELECT l.id FROM credit_usage_log l
        WHERE l.user_id = p_user_id AND l.idempotency_key = p_key AND l.actor_user_id IS NULL
        UNION ALL
        SELECT l.id FROM credit_usage_log l
        WHERE l.actor_user_id = p_user_id AND l.idempotency_key = p_key
    ), debited AS (
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
          AND NOT EXISTS (SELECT FROM earlier)
        RETURNING remaining_credits
    ), logged AS (
        INSERT INTO credit_usage_log (user_id, amount, type, source, idempotency_key)
        SELECT p_user_id, -p_amount, 'debit', 'usage', p_key FROM debited
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
