-- credits-db 0008: one naming scheme (frozen; see sql/ for current definitions).
-- The interface keeps its names in public: the tables, the functions callers
-- call, credits_current_user_id() and the view credits_backfill_candidates.
-- Everything else (the trigger functions, the backfill behind the two backfill
-- wrappers, the install record) moves into credits_internal, where only the
-- owner may create, and loses its prefix there:
--   credits_refuse_log_change()     -> credits_internal.refuse_log_change()
--   credits_allocate_on_signup()    -> credits_internal.allocate_on_signup()
--   credits_topup_on_role_change()  -> credits_internal.topup_on_role_change()
--   credits_backfill(...)           -> credits_internal.backfill(...)
--   credits_db_install              -> credits_internal.install_record
--
-- Triggers and the SQL-standard bodies of the backfill wrappers refer to the
-- functions by oid, so moving and renaming changes no behaviour, no privilege
-- and no data. Locks: ALTER ... SET SCHEMA and RENAME take an ACCESS EXCLUSIVE
-- lock on the one object each, held for a catalog update only.
--
-- No client can break: no role but the owner may execute or read any of these
-- objects (024), and callers reach them only through the interface, whose
-- names do not change.
-- squawk-ignore-file ban-set-schema, renaming-object, renaming-table

ALTER FUNCTION public.credits_refuse_log_change() SET SCHEMA credits_internal;
ALTER FUNCTION credits_internal.credits_refuse_log_change() RENAME TO refuse_log_change;

ALTER FUNCTION public.credits_allocate_on_signup() SET SCHEMA credits_internal;
ALTER FUNCTION credits_internal.credits_allocate_on_signup() RENAME TO allocate_on_signup;

ALTER FUNCTION public.credits_topup_on_role_change() SET SCHEMA credits_internal;
ALTER FUNCTION credits_internal.credits_topup_on_role_change() RENAME TO topup_on_role_change;

ALTER FUNCTION public.credits_backfill(boolean, integer, boolean, uuid) SET SCHEMA credits_internal;
ALTER FUNCTION credits_internal.credits_backfill(boolean, integer, boolean, uuid) RENAME TO backfill;

ALTER TABLE public.credits_db_install SET SCHEMA credits_internal;
ALTER TABLE credits_internal.credits_db_install RENAME TO install_record;
ALTER TABLE credits_internal.install_record
    RENAME CONSTRAINT credits_db_install_singleton TO install_record_singleton;
ALTER INDEX credits_internal.credits_db_install_pkey RENAME TO install_record_pkey;

-- PostgreSQL 18 names NOT NULL constraints after their table
-- (credits_db_install_<column>_not_null); rename them as CREATE TABLE
-- install_record would have named them. Earlier versions have none.
DO $install_record_not_null$
DECLARE
    v_name name;
BEGIN
    FOR v_name IN
        SELECT conname FROM pg_catalog.pg_constraint
        WHERE conrelid = 'credits_internal.install_record'::regclass AND contype = 'n'
          AND conname LIKE 'credits\_db\_install\_%'
    LOOP
        EXECUTE format('ALTER TABLE credits_internal.install_record RENAME CONSTRAINT %I TO %I',
                       v_name, 'install_record_' || substr(v_name, length('credits_db_install_') + 1));
    END LOOP;
END
$install_record_not_null$;

-- The two wrappers, written as sql/ now writes them. Their SQL-standard bodies
-- already call the moved function (bound by oid); CREATE OR REPLACE keeps
-- their privileges and comments.
CREATE OR REPLACE FUNCTION backfill_user_credits(
    p_dry_run boolean DEFAULT false,
    p_limit   integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN credits_internal.backfill(p_dry_run, p_limit, false, NULL::uuid);

CREATE OR REPLACE FUNCTION backfill_user_credits_batch(
    p_after_user_id uuid DEFAULT NULL,
    p_limit         integer DEFAULT 50000
) RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN credits_internal.backfill(false, p_limit, true, p_after_user_id);
