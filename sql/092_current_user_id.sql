-- Whose account the current request acts for: the one identity the self-only
-- rules (debit_credits, get_credit_balance, the row level security policies)
-- compare with.
--   * Supabase (a function auth.uid() exists): auth.uid(), the JWT's subject
--     that PostgREST puts in the request settings. It is looked up at every
--     call and called through EXECUTE, so it may be created after credits-db
--     is installed, and this function compiles without it. It is trusted only
--     when its owner is a superuser, this function's owner, or Supabase's
--     supabase_auth_admin: a role allowed to create a schema named auth must
--     not be able to name the caller (nor run code as the definer functions'
--     owner, who calls this one).
--   * Anywhere else: the setting credits.user_id, which the application sets
--     per transaction for the user it serves:
--         SET LOCAL credits.user_id = '<uuid>';   -- or set_config(..., true)
--     Unset or empty is NULL (no user: every self-only check fails). A value
--     that is not a uuid raises 22P02 rather than reading as "no user", so a
--     bug in the application's middleware is loud, not silently anonymous.
--
-- Trust: like Supabase's request settings, credits.user_id is asserted by the
-- connection, not proven. Any session that can run arbitrary SQL can set it,
-- so give credits_user only to connections whose SQL the application controls
-- (an API server, PostgREST); never to an end user's own database login.
--
-- SECURITY INVOKER (it reads settings and needs no privilege); STABLE so a
-- policy can evaluate it once per query (the policies wrap it in a sub-SELECT).
-- The body is credits_internal.current_user_id(), which the definer functions
-- call (see 012 for why internal); public.credits_current_user_id() is the
-- name for everyone else, a SQL-standard body bound to it when created, so no
-- later overload can come between them.
CREATE FUNCTION credits_internal.current_user_id() RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_setting text;
    v_user_id uuid;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
               WHERE p.oid = to_regprocedure('auth.uid()')
                 AND (r.rolsuper OR r.rolname = 'supabase_auth_admin'
                      OR p.proowner = (SELECT me.proowner FROM pg_catalog.pg_proc me
                                       WHERE me.oid = 'credits_internal.current_user_id()'::regprocedure)))
    THEN
        EXECUTE 'SELECT auth.uid()' INTO v_user_id;
        RETURN v_user_id;
    END IF;

    v_setting := current_setting('credits.user_id', true);
    IF v_setting IS NULL OR v_setting = '' THEN
        RETURN NULL;
    END IF;
    -- The cast's own 22P02 names the bad value; no exception block, which
    -- would cost a subtransaction on every call.
    RETURN v_setting::uuid;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.current_user_id() FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.current_user_id() IS
    'Internal: the body of credits_current_user_id().';

CREATE FUNCTION credits_current_user_id() RETURNS uuid
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
RETURN credits_internal.current_user_id();

REVOKE EXECUTE ON FUNCTION credits_current_user_id() FROM PUBLIC;

COMMENT ON FUNCTION credits_current_user_id() IS
    'The user the current request acts for: auth.uid() when it exists (Supabase) and a trusted role owns it, else the transaction''s setting credits.user_id (empty = NULL, not a uuid = 22P02).';
