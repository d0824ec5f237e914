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
-- reason the users are still created without a balance row, the failure is
-- recorded in credit_allocation_failures (and logged as a WARNING), and the
-- next backfill_user_credits() allocates them and clears the record.
--
-- The record is what an operator and the user's overview see: a server log
-- line is lost on a managed database and says nothing to the user. One row per
-- user (the latest failure); the user's deletion takes it along.
CREATE TABLE credit_allocation_failures (
    user_id   uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    failed_at timestamptz NOT NULL DEFAULT now(),
    sqlstate  text NOT NULL,
    message   text NOT NULL,
    detail    text
);

COMMENT ON TABLE credit_allocation_failures IS
    'Users whose signup allocation failed and who have no balance row yet; the backfill that allocates them deletes their row.';

CREATE FUNCTION credits_internal.allocate_on_signup() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sqlstate text;
    v_message  text;
    v_detail   text;
BEGIN
    BEGIN
        -- Ordered with a role that starts renewing meanwhile (032, 030).
        PERFORM credits_internal.lock_allocation_roles(ARRAY(SELECT DISTINCT n.role
                                                             FROM new_users n));
        WITH planned AS MATERIALIZED (
            SELECT n.id AS user_id,
                   n.role,
                   coalesce(rc.credits, fallback.credits, 0) AS credits,
                   rc.role IS NULL AS is_fallback,
                   -- A renewing role's allowance expires with the account's first
                   -- period (030), which starts now.
                   (now() AT TIME ZONE 'UTC'
                    + CASE WHEN rc.role IS NULL THEN fallback.renewal_interval
                           ELSE rc.renewal_interval END) AT TIME ZONE 'UTC' AS period_ends_at
            FROM new_users n
            LEFT JOIN public.role_credits rc ON rc.role = n.role
            LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        ),
        allocated AS (
            INSERT INTO public.user_credits
                (user_id, total_credits, allocated_credits, tracked_credits, period_ends_at,
                 period_allowance)
            SELECT user_id, credits, credits,
                   CASE WHEN period_ends_at IS NOT NULL THEN credits ELSE 0 END,
                   period_ends_at, CASE WHEN period_ends_at IS NOT NULL THEN credits END
            FROM planned
            ON CONFLICT (user_id) DO NOTHING
            RETURNING user_id
        ),
        logged AS (
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
            WHERE p.credits > 0
            RETURNING id, user_id, amount, source
        )
        -- Each allocation is a lot (026), expiring with the period if the role renews.
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
        SELECT g.user_id, g.id, g.source, g.amount, p.period_ends_at
        FROM logged g JOIN planned p USING (user_id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        RAISE WARNING 'credits-db: signup allocation failed (%: %); the users were created without credits and the next backfill_user_credits() will allocate them',
            v_sqlstate, v_message;
        BEGIN
            INSERT INTO public.credit_allocation_failures AS f (user_id, sqlstate, message, detail)
            SELECT n.id, v_sqlstate, v_message, nullif(v_detail, '') FROM new_users n
            ON CONFLICT (user_id) DO UPDATE
                SET failed_at = now(), sqlstate = EXCLUDED.sqlstate,
                    message = EXCLUDED.message, detail = EXCLUDED.detail;
        EXCEPTION WHEN OTHERS THEN
            -- Whatever broke the allocation may break this too: the signup still stands.
            RAISE WARNING 'credits-db: the signup allocation failure could not be recorded (%: %)',
                SQLSTATE, SQLERRM;
        END;
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
