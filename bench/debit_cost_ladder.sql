-- Workload 3, where a debit's server time goes: one session calls each rung
-- p_calls times, every call its own committed transaction (as a pgbench client
-- does), and reports the mean microseconds per call. No client, no network, no
-- other session: far steadier than tps on a shared 2-core machine, so a few
-- microseconds show. Each rung adds one piece of the contract to the one below:
--   bare       the bare statement (pgbench_debit_bare.sql)
--   function   inside the least PL/pgSQL function (bench_debit_floor)
--   result     + the documented jsonb result (bench_debit_ladder_result)
--   definer    + SECURITY DEFINER with search_path = pg_catalog, pg_temp
--              (bench_debit_ladder_definer)
--   contract   + the permission check = bench_debit_contract_floor
--   package    debit_credits() itself
--   0009       debit_credits() as revision 0009 had it, before lots
--              (bench_debit_credits_0009, bench/debit_0009_function.sql;
--              not a rung: for comparisons with package)
-- Every rung names our objects qualified public. (revision 0007), as the
-- package does: the name is resolved when the statement is planned, so it
-- costs no rung anything per call, and the rungs differ only by their piece.
-- The session runs with synchronous_commit off (bench/workloads.py), so the
-- commit's flush wait, equal for every rung, does not drown the differences.
-- Bench-only: never installed by credits-db.
CREATE FUNCTION bench_debit_ladder_result(p_user_id uuid, p_amount integer) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_result jsonb;
BEGIN
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

CREATE FUNCTION bench_debit_ladder_definer(p_user_id uuid, p_amount integer) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
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

-- Static calls, one per rung (an EXECUTE would add planning to every call).
CREATE PROCEDURE bench_debit_ladder(p_rung text, p_calls integer, p_accounts integer,
                                    INOUT p_us_per_call float8 DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_n integer;
BEGIN
    FOR i IN 1 .. p_calls LOOP
        v_n := 1 + floor(random() * p_accounts)::integer;
        CASE p_rung
        WHEN 'bare' THEN
            WITH d AS (
                UPDATE public.user_credits
                SET used_credits = used_credits + 1, last_updated = now()
                WHERE user_id = (SELECT id FROM public.bench_ids WHERE n = v_n) AND remaining_credits >= 1
                RETURNING user_id
            )
            INSERT INTO public.credit_usage_log (user_id, amount, type, source)
            SELECT user_id, -1, 'debit', 'usage' FROM d;
        WHEN 'function' THEN
            PERFORM public.bench_debit_floor((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
        WHEN 'result' THEN
            PERFORM public.bench_debit_ladder_result((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
        WHEN 'definer' THEN
            PERFORM public.bench_debit_ladder_definer((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
        WHEN 'contract' THEN
            PERFORM public.bench_debit_contract_floor((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
        WHEN 'package' THEN
            PERFORM public.debit_credits((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
        WHEN '0009' THEN
            PERFORM public.bench_debit_credits_0009((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
        END CASE;
        COMMIT;
    END LOOP;
    p_us_per_call := extract(epoch FROM clock_timestamp() - v_started) * 1e6 / p_calls;
END
$$;
