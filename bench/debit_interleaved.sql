-- Workload 7, one session: debit_credits() vs revision 0009's
-- (bench_debit_credits_0009) on accounts without tracked lots, alternating
-- every p_block calls (the side that goes first swapped every block), every
-- call its own committed transaction, as in bench/debit_cost_ladder.sql. The
-- two differ by one predicate of the hot path, far less than a shared
-- machine's drift over the seconds a side takes; alternating by blocks puts
-- that drift on both sides alike (as the Python rows of workload 5 do).
-- Returns the mean microseconds per call of each side. Bench-only.
CREATE PROCEDURE bench_debit_interleaved(p_calls integer, p_accounts integer, p_block integer,
                                         INOUT p_package_us float8 DEFAULT NULL,
                                         INOUT p_0009_us float8 DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_spent float8[] := ARRAY[0, 0];
    v_started timestamptz;
    v_side integer;
    v_n integer;
BEGIN
    FOR b IN 0 .. (p_calls / p_block) * 2 - 1 LOOP
        -- Blocks A B B A A B ...: each pair starts with the side the last one ended with.
        v_side := CASE WHEN (b / 2) % 2 = 0 THEN b % 2 ELSE 1 - b % 2 END;
        v_started := clock_timestamp();
        FOR i IN 1 .. p_block LOOP
            v_n := 1 + floor(random() * p_accounts)::integer;
            IF v_side = 0 THEN
                PERFORM public.debit_credits((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
            ELSE
                PERFORM public.bench_debit_credits_0009((SELECT id FROM public.bench_ids WHERE n = v_n), 1);
            END IF;
            COMMIT;
        END LOOP;
        v_spent[v_side + 1] := v_spent[v_side + 1]
            + extract(epoch FROM clock_timestamp() - v_started);
    END LOOP;
    p_package_us := v_spent[1] * 1e6 / ((p_calls / p_block) * p_block);
    p_0009_us := v_spent[2] * 1e6 / ((p_calls / p_block) * p_block);
END
$$
