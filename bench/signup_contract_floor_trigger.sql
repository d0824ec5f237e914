-- Workload 2, the floor under the signup *contract* (issue 2): what any signup
-- allocation must be, with the least body. Mandated: an AFTER INSERT trigger
-- FOR EACH STATEMENT with a transition table (bulk inserts stay fast), and "a
-- signup never fails because of credits", which in PL/pgSQL is a BEGIN ...
-- EXCEPTION block (a subtransaction); it runs as its owner (only the owner
-- writes the balance and log tables) with search_path = pg_catalog, pg_temp and
-- every object of ours qualified public., as the package's trigger since
-- revision 0007. The body writes the balance and log rows the package's
-- trigger writes (the role's allocation, the member fallback, the same
-- descriptions; since revision 0007 the balance row carries allocated_credits =
-- the allocation, and opened_after_log_id is left to its default, a draw from
-- the log's sequence, as the package leaves it; since revision 0010 each
-- allocation's untracked lot), without the package's ON
-- CONFLICT (a user inserted while a backfill runs) or its MATERIALIZED plan.
-- The log rows join the inserted balance rows (RETURNING), as the package's do:
-- since revision 0007 an account's entries are those above its watermark, so
-- its balance row must be written before its log row. An unreferenced
-- data-modifying CTE runs after the main INSERT, which would draw the
-- watermark above the allocation's own entry (verify_credit_integrity() then
-- reports the account).
--
-- Installed on a copy whose package trigger is disabled. Bench-only: never
-- installed by credits-db; tests/bench/test_bench.py checks it writes the same rows.
CREATE FUNCTION bench_signup_contract_floor() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        WITH planned AS (
            SELECT n.id, coalesce(rc.credits, fallback.credits) AS credits,
                   CASE
                       WHEN rc.role IS NOT NULL THEN 'signup allocation for role ' || n.role
                       WHEN n.role IS NULL THEN 'signup allocation: no role, member allocation (fallback)'
                       ELSE format('signup allocation: unknown role %L, member allocation (fallback)', n.role)
                   END AS description
            FROM new_users n
            LEFT JOIN public.role_credits rc ON rc.role = n.role
            LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        ), balance AS (
            INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
            SELECT id, credits, credits FROM planned
            RETURNING user_id
        ), logged AS (
            INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
            SELECT p.id, p.credits, 'credit', 'signup', p.description
            FROM planned p JOIN balance b ON b.user_id = p.id
            RETURNING id, user_id, amount, source
        )
        -- Each allocation is an untracked lot (revision 0010), as the package's is.
        INSERT INTO public.credit_lots (user_id, log_id, source, amount)
        SELECT g.user_id, g.id, g.source, g.amount FROM logged g;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'bench: signup allocation failed (%: %)', SQLSTATE, SQLERRM;
    END;
    RETURN NULL;
END
$$;

ALTER TABLE users DISABLE TRIGGER users_allocate_credits;

CREATE TRIGGER bench_signup_contract_floor
    AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_users
    FOR EACH STATEMENT EXECUTE FUNCTION bench_signup_contract_floor();
