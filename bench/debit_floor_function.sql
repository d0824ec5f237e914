-- Workload 3, the floor under any function-based API: the bare statement
-- wrapped in the least PL/pgSQL function (no checks, no result, invoker's
-- rights, no pinned search_path). Its distance from the bare statement is what
-- calling a function costs at all; debit_credits() pays that plus its contract
-- (jsonb result, SECURITY DEFINER with search_path = pg_catalog, pg_temp, the
-- permission check, argument checks). Names are qualified public. like the
-- package's (revision 0007; resolved at planning, no cost per call), so the
-- rungs above it differ only by their piece. Bench-only: never installed by
-- credits-db.
CREATE FUNCTION bench_debit_floor(p_user_id uuid, p_amount integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    WITH d AS (
        UPDATE public.user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
        RETURNING user_id
    )
    INSERT INTO public.credit_usage_log (user_id, amount, type, source)
    SELECT user_id, -p_amount, 'debit', 'usage' FROM d;
END
$$
