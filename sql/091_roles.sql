-- Two NOLOGIN roles carry every privilege credits-db hands out; applications
-- and people get them by membership (GRANT credits_user TO app_login):
--   credits_user  - get_credit_balance and debit_credits for its own account
--                   (credits_current_user_id()), and SELECT of its own rows
--                   (row level security, see 093);
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
-- TRUE); on 15, 094_grants.sql grants a NOINHERIT role the privileges directly.
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
