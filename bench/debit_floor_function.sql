-- Workload 3, the floor under any function-based API: the bare statement
-- wrapped in the least PL/pgSQL function (no checks, no result, invoker's
-- rights, no pinned search_path). Its distance from the bare statement is what
-- calling a function costs at all; debit_credits() pays that plus its contract
-- (jsonb result, SECURITY DEFINER with a pinned search_path, the permission
-- check, argument checks). Bench-only: never installed by credits-db.
CREATE FUNCTION bench_debit_floor(p_user_id uuid, p_amount integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    WITH d AS (
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
        RETURNING user_id
    )
    INSERT INTO credit_usage_log (user_id, amount, type, source)
    SELECT user_id, -p_amount, 'debit', 'usage' FROM d;
END
$$
