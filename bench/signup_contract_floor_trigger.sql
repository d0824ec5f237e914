-- Workload 2, the floor under the signup *contract* (issue 2): what any signup
-- allocation must be, with the least body. Mandated: an AFTER INSERT trigger
-- FOR EACH STATEMENT with a transition table (bulk inserts stay fast), and "a
-- signup never fails because of credits", which in PL/pgSQL is a BEGIN ...
-- EXCEPTION block (a subtransaction); it runs as its owner with a pinned
-- search_path, since only the owner writes the balance and log tables. The body
-- writes the balance and log rows the package's trigger writes (the role's
-- allocation, the member fallback, the same descriptions), without the
-- package's ON CONFLICT (a user inserted while a backfill runs) or its
-- MATERIALIZED plan.
--
-- Installed on a copy whose package trigger is disabled. Bench-only: never
-- installed by credits-db; tests/test_bench.py checks it writes the same rows.
CREATE FUNCTION bench_signup_contract_floor() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
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
            LEFT JOIN role_credits rc ON rc.role = n.role
            LEFT JOIN role_credits fallback ON fallback.role = 'member'
        ), balance AS (
            INSERT INTO user_credits (user_id, total_credits)
            SELECT id, credits FROM planned
        )
        INSERT INTO credit_usage_log (user_id, amount, type, source, description)
        SELECT id, credits, 'credit', 'signup', description FROM planned;
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
