-- Every new user gets their role's allocation in the same transaction as the
-- INSERT. One statement-level trigger with a transition table turns a bulk
-- signup (COPY, INSERT ... SELECT of 100k rows) into two set-based INSERTs
-- instead of 100k function calls.
--
-- Every name is qualified and the search_path holds only pg_catalog (and
-- pg_temp, last, which is never searched for functions or operators): an
-- object someone else creates in public cannot be picked instead of ours.
--
-- A signup must never fail because of credits: if allocating fails for any
-- reason the users are still created, a WARNING is logged, and the next
-- backfill_user_credits() picks them up (they have no user_credits row).
CREATE FUNCTION credits_internal.allocate_on_signup() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        WITH planned AS MATERIALIZED (
            SELECT n.id AS user_id,
                   n.role,
                   coalesce(rc.credits, fallback.credits, 0) AS credits,
                   rc.role IS NULL AS is_fallback
            FROM new_users n
            LEFT JOIN public.role_credits rc ON rc.role = n.role
            LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        ),
        allocated AS (
            INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
            SELECT user_id, credits, credits FROM planned
            ON CONFLICT (user_id) DO NOTHING
            RETURNING user_id
        )
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT p.user_id, p.credits, 'credit', 'signup',
               CASE
                   WHEN NOT p.is_fallback THEN 'signup allocation for role ' || p.role
                   WHEN p.role IS NULL THEN 'signup allocation: no role, member allocation (fallback)'
                   ELSE format('signup allocation: unknown role %L, member allocation (fallback)', p.role)
               END
        FROM planned p
        JOIN allocated a USING (user_id)
        -- A zero allocation (a role configured with 0 credits) has nothing to log:
        -- the balance row alone keeps remaining_credits = sum(amount) = 0.
        WHERE p.credits > 0;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'credits-db: signup allocation failed (%: %); the users were created without credits and the next backfill_user_credits() will allocate them',
            SQLSTATE, SQLERRM;
    END;
    RETURN NULL;
END
$$;

-- CREATE TRIGGER takes a SHARE ROW EXCLUSIVE lock on the host's users table
-- for an instant (no scan): signups wait that long, reads never do.
CREATE TRIGGER users_allocate_credits
    AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_users
    FOR EACH STATEMENT EXECUTE FUNCTION credits_internal.allocate_on_signup();

REVOKE EXECUTE ON FUNCTION credits_internal.allocate_on_signup() FROM PUBLIC;
