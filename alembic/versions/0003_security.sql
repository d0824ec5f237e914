-- credits-db 0003: roles, privileges, row level security, self-only debit and balance (frozen; see sql/ for current definitions).

-- ---- 021_roles.sql ----
-- Two NOLOGIN roles carry every privilege credits-db hands out; applications
-- and people get them by membership (GRANT credits_user TO app_login):
--   credits_user  - get_credit_balance and debit_credits for its own account
--                   (credits_current_user_id()), and SELECT of its own rows
--                   (row level security, see 023);
--   credits_admin - everything credits_user may, for every account, plus
--                   backfill, grant, refund, team membership, the integrity
--                   check and the allocation report, and SELECT of every row.
-- Nobody but the tables' owner writes the tables directly: every write goes
-- through the SECURITY DEFINER functions.
--
-- Roles are cluster-wide, shared by every database on the server, so they are
-- created only if missing (a DBA may create them beforehand; installing then
-- needs no CREATEROLE) and a downgrade never drops them, nor the memberships
-- granted below: another database may rely on them. A downgrade revokes only
-- what this revision granted inside its own database. Two installs racing on
-- one server (parallel test runs) may both see a role missing; the loser's
-- duplicate is ignored.
DO $credits_roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['credits_user', 'credits_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$credits_roles$;

-- Supabase: requests signed in with a user's JWT run as `authenticated`, the
-- service key runs as `service_role`. When those roles exist, they get the
-- credits roles (an ordinary install has neither and grants nothing). On any
-- other platform, grant the roles to your own login roles the same way.
--
-- Supabase creates both roles NOINHERIT, so a plain membership would carry no
-- privileges. PostgreSQL 16+ lets the grant itself inherit (WITH INHERIT
-- TRUE); on 15, 024_grants.sql grants a NOINHERIT role the privileges directly.
DO $credits_supabase_roles$
DECLARE
    v_pair text[];
BEGIN
    FOREACH v_pair SLICE 1 IN ARRAY ARRAY[['credits_user', 'authenticated'],
                                          ['credits_admin', 'service_role']] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_pair[2]);
        BEGIN
            IF current_setting('server_version_num')::integer >= 160000 THEN
                -- Also turns an existing non-inheriting membership into an inheriting one.
                EXECUTE format('GRANT %I TO %I WITH INHERIT TRUE', v_pair[1], v_pair[2]);
            ELSIF NOT pg_catalog.pg_has_role(v_pair[2], v_pair[1], 'MEMBER') THEN
                EXECUTE format('GRANT %I TO %I', v_pair[1], v_pair[2]);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- granted by a concurrent install
        END;
    END LOOP;
END
$credits_supabase_roles$;

-- ---- 022_current_user_id.sql ----
-- Whose account the current request acts for: the one identity the self-only
-- rules (debit_credits, get_credit_balance, the row level security policies)
-- compare with.
--   * Supabase (a function auth.uid() exists): auth.uid(), the JWT's subject
--     that PostgREST puts in the request settings. It is looked up at every
--     call and called through EXECUTE, so it may be created after credits-db
--     is installed, and this function compiles without it.
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
CREATE FUNCTION credits_current_user_id() RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_setting text;
    v_user_id uuid;
BEGIN
    IF to_regprocedure('auth.uid()') IS NOT NULL THEN
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

REVOKE EXECUTE ON FUNCTION credits_current_user_id() FROM PUBLIC;

COMMENT ON FUNCTION credits_current_user_id() IS
    'The user the current request acts for: auth.uid() when it exists (Supabase), else the setting credits.user_id (empty = NULL, not a uuid = 22P02).';

-- ---- 015_debit_credits.sql (replaced: permission check, pg_temp last) ----
-- Spends credits: from the user's own account if it can pay the whole amount,
-- else from their team admin's account if that can, else CR001. Never split: a
-- debit is one log row on one account.
--
-- Every balance change is one conditional UPDATE (the WHERE re-checks the
-- balance on the locked, latest row version), never a read followed by a write,
-- so concurrent debits can neither overdraw nor lose an update; the log row is
-- written in the same transaction.
--
-- The own-account debit without an idempotency key is the hot path: a single
-- statement, the UPDATE and the log INSERT together, with no query before it.
-- Anything else (naming a bad argument, unknown user, team pool, diagnosing a
-- refusal) is looked up only after that UPDATE found nothing to debit.
--
-- Idempotency: a key is scoped to the account the entry is written to (the
-- unique index on (user_id, idempotency_key)). The caller's earlier entry for
-- a key is their own-account entry with that key, or any pool entry they made
-- with it (actor = caller), whatever pool they are in now, so leaving a team
-- cannot turn a retry into a second debit. Racing calls by one caller with one
-- key queue on a transaction-scoped advisory lock on (caller, key) and then
-- find the winner's entry; a key taken on the account by someone else (another
-- member of the same pool, or a grant) is CR007.
--
-- Argument errors, checked in this order (after the permission check below): NULL user CR005, NULL or non-positive
-- amount CR006, NULL or empty source 22023, empty or over-255-character key 22023.
--
-- Permission (revision 0003): a caller who is a member of credits_admin (a
-- superuser counts as a member) may debit any account; anyone else only their
-- own, credits_current_user_id(), else 42501 (a NULL p_user_id included). The
-- function runs as its owner (SECURITY DEFINER changes current_user), but not
-- the `role` setting: the calling role is that setting, or session_user when
-- no SET ROLE is in effect. A nested caller (another SECURITY DEFINER function
-- calling this one) is therefore judged by the session's role, not by that
-- function's owner. The role lookup runs first: it is a cached catalog check
-- (about 0.3 us), while credits_current_user_id() costs about 2 us (a call
-- with a pinned search_path), so an admin caller never pays for the latter.
CREATE OR REPLACE FUNCTION debit_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'usage',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_log_id    bigint;
    v_remaining integer;
    v_admin     uuid;
    v_entry     credit_usage_log;
    v_own       integer;
    v_pool      integer;
    v_result    jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin', 'MEMBER')
       AND (p_user_id = credits_current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not spend the credits of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  DETAIL = format('caller %s is user %s and not a member of credits_admin',
                                  coalesce(nullif(current_setting('role'), 'none'), session_user),
                                  coalesce(credits_current_user_id()::text, 'NULL')),
                  HINT = 'A credits_user may debit only its own account (credits_current_user_id()).';
    END IF;

    -- The hot path: one statement. Its WHERE also refuses invalid arguments (a
    -- NULL matches nothing), so they cost nothing here and are named below.
    -- p_amount > 0 also keeps -p_amount (folded when the statement is planned)
    -- from overflowing for -2^31: that amount is named as CR006 below.
    IF p_idempotency_key IS NULL AND p_amount > 0 THEN
        WITH debited AS (
            UPDATE user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount
              AND p_amount > 0 AND p_source <> ''
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO credit_usage_log (user_id, amount, type, source, description)
            SELECT p_user_id, -p_amount, 'debit', p_source, p_description FROM debited
            RETURNING id
        )
        SELECT jsonb_build_object(
                   'log_id', logged.id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                   'amount', p_amount, 'remaining_credits', debited.remaining_credits,
                   'from_team_pool', false, 'replayed', false)
        INTO v_result
        FROM logged, debited;

        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;
    END IF;

    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a debit must be a positive integer',
            coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
    ELSIF p_source IS NULL OR p_source = '' THEN
        RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
    ELSIF p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        -- A longer key might not fit the unique index (54000): refuse it by name.
        RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
            USING ERRCODE = '22023';
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.idempotency:' || p_user_id::text || ':' || p_idempotency_key, 0));

        -- A debit row first: a grant to the caller's own account under the same
        -- key must not hide the debit this call is a retry of.
        -- Two branches, one per index: an OR across user_id and actor_user_id
        -- would leave the key alone as the index condition and scan every
        -- keyed row ever written.
        SELECT e.* INTO v_entry
        FROM (
            SELECT l.* FROM credit_usage_log l
            WHERE l.user_id = p_user_id AND l.idempotency_key = p_idempotency_key
              AND l.actor_user_id IS NULL
            UNION ALL
            SELECT l.* FROM credit_usage_log l
            WHERE l.actor_user_id = p_user_id AND l.idempotency_key = p_idempotency_key
        ) AS e
        ORDER BY e.type = 'debit' DESC, e.id
        LIMIT 1;
        IF FOUND THEN
            IF v_entry.type <> 'debit' OR v_entry.amount <> -p_amount
               OR v_entry.source <> p_source THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s; this call: debit of %s, source %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, p_amount, p_source);
            END IF;
            RETURN credits_replayed_result(v_entry);
        END IF;

        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
        RETURNING remaining_credits INTO v_remaining;

        IF FOUND THEN
            INSERT INTO credit_usage_log
                (user_id, amount, type, source, description, idempotency_key)
            VALUES (p_user_id, -p_amount, 'debit', p_source, p_description, p_idempotency_key)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id INTO v_log_id;
            IF v_log_id IS NULL THEN
                RAISE EXCEPTION 'idempotency key % was already used on this account by another call',
                    p_idempotency_key
                    USING ERRCODE = 'CR007', DETAIL = format('account %s', p_user_id);
            END IF;
            RETURN jsonb_build_object(
                'log_id', v_log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                'amount', p_amount, 'remaining_credits', v_remaining,
                'from_team_pool', false, 'replayed', false);
        END IF;
    END IF;

    -- The own account could not pay (or has no balance row yet): the pool.
    SELECT t.team_admin_id INTO v_admin
    FROM team_credit_sharing t WHERE t.team_member_id = p_user_id;

    IF FOUND THEN
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = v_admin AND remaining_credits >= p_amount
        RETURNING remaining_credits INTO v_remaining;

        IF FOUND THEN
            INSERT INTO credit_usage_log
                (user_id, actor_user_id, amount, type, source, description, idempotency_key)
            VALUES (v_admin, p_user_id, -p_amount, 'debit', p_source, p_description,
                    p_idempotency_key)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id INTO v_log_id;
            IF v_log_id IS NULL THEN
                RAISE EXCEPTION 'idempotency key % was already used on the team pool account by another call',
                    p_idempotency_key
                    USING ERRCODE = 'CR007', DETAIL = format('team pool account %s', v_admin);
            END IF;
            RETURN jsonb_build_object(
                'log_id', v_log_id, 'account_user_id', v_admin, 'actor_user_id', p_user_id,
                'amount', p_amount, 'remaining_credits', v_remaining,
                'from_team_pool', true, 'replayed', false);
        END IF;
    END IF;

    -- Refused: only now is it worth telling an unknown user from a poor one.
    PERFORM 1 FROM users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    SELECT uc.remaining_credits INTO v_own FROM user_credits uc WHERE uc.user_id = p_user_id;
    IF v_admin IS NOT NULL THEN
        SELECT uc.remaining_credits INTO v_pool FROM user_credits uc WHERE uc.user_id = v_admin;
    END IF;
    RAISE EXCEPTION 'insufficient credits: % requested', p_amount
        USING ERRCODE = 'CR001',
              DETAIL = format('own remaining %s; team pool %s',
                              coalesce(v_own::text, 'none (no balance yet)'),
                              CASE WHEN v_admin IS NULL THEN 'none (not in a team)'
                                   ELSE format('of %s remaining %s', v_admin,
                                               coalesce(v_pool::text, 'none'))
                              END);
END
$$;

REVOKE EXECUTE ON FUNCTION debit_credits(uuid, integer, text, text, text) FROM PUBLIC;

COMMENT ON FUNCTION debit_credits(uuid, integer, text, text, text) IS
    'Spend p_amount from the own account, else wholly from the team pool; CR001 if neither can pay. Keyed calls replay (replayed = true) instead of spending twice. Only credits_admin members may debit another user''s account (else 42501).';

-- ---- 018_get_credit_balance.sql (replaced: permission check, pg_temp last) ----
-- What a user can spend right now. One statement, so own balance, pool
-- membership and pool balance come from one snapshot and agree with each
-- other. spendable is the largest amount a single debit_credits call would
-- accept: debits are never split, so it is the larger of the two balances,
-- not their sum. A NULL id is an unknown user (CR005).
--
-- Permission (revision 0003): as debit_credits, a caller outside credits_admin
-- may read only their own balance, credits_current_user_id(), else 42501.
CREATE OR REPLACE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin', 'MEMBER')
       AND (p_user_id = credits_current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not read the balance of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  HINT = 'A credits_user may read only its own balance (credits_current_user_id()).';
    END IF;

    SELECT jsonb_build_object(
        'user_id', u.id,
        'own', CASE WHEN own.user_id IS NULL THEN NULL
                    ELSE jsonb_build_object('total_credits', own.total_credits,
                                            'used_credits', own.used_credits,
                                            'remaining_credits', own.remaining_credits)
               END,
        'team_admin_id', t.team_admin_id,
        'team_pool_remaining', pool.remaining_credits,
        'spendable', coalesce(greatest(own.remaining_credits, pool.remaining_credits), 0)
    )
    INTO v_result
    FROM users u
    LEFT JOIN user_credits own ON own.user_id = u.id
    LEFT JOIN team_credit_sharing t ON t.team_member_id = u.id
    LEFT JOIN user_credits pool ON pool.user_id = t.team_admin_id
    WHERE u.id = p_user_id;

    IF v_result IS NULL THEN
        RAISE EXCEPTION 'unknown user %', coalesce(p_user_id::text, 'NULL') USING ERRCODE = 'CR005';
    END IF;
    RETURN v_result;
END
$$;

REVOKE EXECUTE ON FUNCTION get_credit_balance(uuid) FROM PUBLIC;

COMMENT ON FUNCTION get_credit_balance(uuid) IS
    'Own balance, team pool and spendable (the largest single debit accepted now) of one user; CR005 if unknown. Only credits_admin members may read another user''s balance (else 42501).';

-- ---- 006-020 (changed in place: search_path gains pg_temp) ----
-- Every other function of 0001 and 0002 keeps its body; only its search_path
-- gains pg_temp, named last (see 024_grants.sql for why). sql/006-020 carry
-- the same setting in place.
ALTER FUNCTION credits_refuse_log_change() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION credits_allocate_on_signup() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION backfill_user_credits(boolean, integer) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION credit_allocation_report() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION credits_replayed_result(credit_usage_log) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION add_team_member(uuid, uuid) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION remove_team_member(uuid, uuid) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION grant_credits(uuid, integer, text, text, text) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION refund_credits(bigint, text) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION credits_topup_on_role_change() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION verify_credit_integrity() SET search_path = pg_catalog, public, pg_temp;

-- ---- 023_row_level_security.sql ----
-- Row level security on the three tables credits_user may read. "Me" below is
-- credits_current_user_id(), evaluated once per query (the sub-SELECTs make
-- it, and the admin test, InitPlans rather than calls per row).
--   user_credits:        my balance row, and my team pool's (the row of the
--                        admin whose pool I am in: what I may spend from);
--   credit_usage_log:    entries on my account (for a team admin that
--                        includes the pool debits their members made), and
--                        entries I caused on another account (my pool debits
--                        and their refunds, actor_user_id = me);
--   team_credit_sharing: my memberships, as admin or as member.
-- A member of credits_admin sees every row. "Member" is pg_has_role(...,
-- 'MEMBER'), as in debit_credits: it holds for a NOINHERIT member such as
-- Supabase's service_role too, which a policy "TO credits_admin" would miss.
-- For the same reason the policies are for every role (TO PUBLIC): who may
-- read at all is decided by the SELECT privilege (024); the policy decides
-- which rows.
--
-- Only SELECT policies exist: with row level security on and no INSERT,
-- UPDATE or DELETE policy, a direct write by anyone but the owner touches no
-- row even where a table privilege was granted (credits_user and
-- credits_admin hold none, see 024).
--
-- ENABLE, not FORCE: the tables' owner is exempt, and every SECURITY DEFINER
-- function runs as the owner, so the functions read and write every row they
-- need. FORCE would subject the functions to these policies and break them.
-- (Superusers and BYPASSRLS roles are exempt anyway.)
ALTER TABLE user_credits ENABLE ROW LEVEL SECURITY;
ALTER TABLE credit_usage_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE team_credit_sharing ENABLE ROW LEVEL SECURITY;

CREATE POLICY credits_visible_rows ON team_credit_sharing
    FOR SELECT
    USING ((SELECT pg_has_role('credits_admin', 'MEMBER'))
           OR team_member_id = (SELECT credits_current_user_id())
           OR team_admin_id = (SELECT credits_current_user_id()));

-- The pool lookup reads team_credit_sharing under its own policy, which shows
-- the member their membership row: no recursion, no definer function needed.
CREATE POLICY credits_visible_rows ON user_credits
    FOR SELECT
    USING ((SELECT pg_has_role('credits_admin', 'MEMBER'))
           OR user_id = (SELECT credits_current_user_id())
           OR user_id IN (SELECT t.team_admin_id FROM team_credit_sharing t
                          WHERE t.team_member_id = (SELECT credits_current_user_id())));

CREATE POLICY credits_visible_rows ON credit_usage_log
    FOR SELECT
    USING ((SELECT pg_has_role('credits_admin', 'MEMBER'))
           OR user_id = (SELECT credits_current_user_id())
           OR actor_user_id = (SELECT credits_current_user_id()));

-- ---- 024_grants.sql ----
-- Privileges, all explicit. Every function has had EXECUTE revoked from PUBLIC
-- where it was created; here each role gets exactly what it may call. The
-- trigger functions and credits_replayed_result (an internal helper) are
-- granted to nobody: triggers fire without an EXECUTE check, and the helper
-- is only called from inside the SECURITY DEFINER functions, as the owner.
--
-- Every SECURITY DEFINER function pins search_path = pg_catalog, public,
-- pg_temp. pg_temp is named, and last, on purpose: a schema search path that
-- leaves it out still searches the session's temporary schema first for
-- tables, so any caller allowed to create temporary tables could shadow
-- user_credits or credit_usage_log inside a function running as the owner.
GRANT USAGE ON SCHEMA public TO credits_user, credits_admin;

-- Supabase's default privileges give anon, authenticated and service_role
-- ALL on every new table, sequence and function in public, which would let
-- any signed-in user TRUNCATE balances (TRUNCATE ignores row level security)
-- or call grant_credits. They are taken back from credits-db's own objects
-- (never from the host's); those roles then hold only what credits_user and
-- credits_admin give them. A downgrade does not hand them back.
DO $credits_revoke_api_roles$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('anon', 'authenticated', 'service_role')
    LOOP
        EXECUTE format('REVOKE ALL ON TABLE public.credits_db_install, public.role_credits,'
                       ' public.user_credits, public.credit_usage_log,'
                       ' public.team_credit_sharing, public.credits_backfill_candidates FROM %I',
                       v_role);
        EXECUTE format('REVOKE ALL ON SEQUENCE public.credit_usage_log_id_seq,'
                       ' public.team_credit_sharing_id_seq FROM %I', v_role);
        EXECUTE format('REVOKE ALL ON FUNCTION'
                       ' public.credits_refuse_log_change(),'
                       ' public.credits_allocate_on_signup(),'
                       ' public.backfill_user_credits(boolean, integer),'
                       ' public.credit_allocation_report(),'
                       ' public.credits_replayed_result(public.credit_usage_log),'
                       ' public.add_team_member(uuid, uuid),'
                       ' public.remove_team_member(uuid, uuid),'
                       ' public.debit_credits(uuid, integer, text, text, text),'
                       ' public.grant_credits(uuid, integer, text, text, text),'
                       ' public.refund_credits(bigint, text),'
                       ' public.get_credit_balance(uuid),'
                       ' public.credits_topup_on_role_change(),'
                       ' public.verify_credit_integrity(),'
                       ' public.credits_current_user_id() FROM %I', v_role);
    END LOOP;
END
$credits_revoke_api_roles$;

-- Reading: credits_user its own rows (row level security, 023), credits_admin
-- everything. Writing: nobody but the owner.
GRANT SELECT ON user_credits, credit_usage_log, team_credit_sharing TO credits_user;
GRANT SELECT ON credits_db_install, role_credits, user_credits, credit_usage_log,
                team_credit_sharing, credits_backfill_candidates TO credits_admin;

GRANT EXECUTE ON FUNCTION credits_current_user_id(),
                          get_credit_balance(uuid),
                          debit_credits(uuid, integer, text, text, text)
    TO credits_user, credits_admin;
GRANT EXECUTE ON FUNCTION backfill_user_credits(boolean, integer),
                          grant_credits(uuid, integer, text, text, text),
                          refund_credits(bigint, text),
                          add_team_member(uuid, uuid),
                          remove_team_member(uuid, uuid),
                          verify_credit_integrity(),
                          credit_allocation_report()
    TO credits_admin;

-- PostgreSQL 15 has no per-grant INHERIT: a NOINHERIT member (Supabase's
-- authenticated and service_role, see 021) gets nothing from its membership,
-- so it gets the same privileges directly. On 16+ the membership inherits.
DO $credits_noinherit_members$
BEGIN
    IF current_setting('server_version_num')::integer >= 160000 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated' AND NOT rolinherit)
       AND pg_catalog.pg_has_role('authenticated', 'credits_user', 'MEMBER') THEN
        GRANT USAGE ON SCHEMA public TO authenticated;
        GRANT SELECT ON user_credits, credit_usage_log, team_credit_sharing TO authenticated;
        GRANT EXECUTE ON FUNCTION credits_current_user_id(),
                                  get_credit_balance(uuid),
                                  debit_credits(uuid, integer, text, text, text)
            TO authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role' AND NOT rolinherit)
       AND pg_catalog.pg_has_role('service_role', 'credits_admin', 'MEMBER') THEN
        GRANT USAGE ON SCHEMA public TO service_role;
        GRANT SELECT ON credits_db_install, role_credits, user_credits, credit_usage_log,
                        team_credit_sharing, credits_backfill_candidates TO service_role;
        GRANT EXECUTE ON FUNCTION credits_current_user_id(),
                                  get_credit_balance(uuid),
                                  debit_credits(uuid, integer, text, text, text),
                                  backfill_user_credits(boolean, integer),
                                  grant_credits(uuid, integer, text, text, text),
                                  refund_credits(bigint, text),
                                  add_team_member(uuid, uuid),
                                  remove_team_member(uuid, uuid),
                                  verify_credit_integrity(),
                                  credit_allocation_report()
            TO service_role;
    END IF;
END
$credits_noinherit_members$;

-- ---- 025_actor_history_index.sql ----
-- "Everything this user caused" (a member's spending from their team pool, in
-- the billing overview and under row-level security) is the actor's history,
-- newest first: a range scan of this index, never a scan of the ledger.
-- Building it blocks writes to the log for one scan; see 011 on quiet windows.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_actor_history_idx
    ON credit_usage_log (actor_user_id, created_at DESC, id DESC)
    WHERE actor_user_id IS NOT NULL;
