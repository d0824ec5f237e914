-- credits-db 0008, downgrade: the names 0007 left.
ALTER INDEX credits_internal.install_record_pkey RENAME TO credits_db_install_pkey;
DO $install_record_not_null$
DECLARE
    v_name name;
BEGIN
    FOR v_name IN
        SELECT conname FROM pg_catalog.pg_constraint
        WHERE conrelid = 'credits_internal.install_record'::regclass AND contype = 'n'
          AND conname LIKE 'install\_record\_%'
    LOOP
        EXECUTE format('ALTER TABLE credits_internal.install_record RENAME CONSTRAINT %I TO %I',
                       v_name, 'credits_db_install_' || substr(v_name, length('install_record_') + 1));
    END LOOP;
END
$install_record_not_null$;
ALTER TABLE credits_internal.install_record
    RENAME CONSTRAINT install_record_singleton TO credits_db_install_singleton;
ALTER TABLE credits_internal.install_record RENAME TO credits_db_install;
ALTER TABLE credits_internal.credits_db_install SET SCHEMA public;

ALTER FUNCTION credits_internal.backfill(boolean, integer, boolean, uuid) RENAME TO credits_backfill;
ALTER FUNCTION credits_internal.credits_backfill(boolean, integer, boolean, uuid) SET SCHEMA public;

ALTER FUNCTION credits_internal.topup_on_role_change() RENAME TO credits_topup_on_role_change;
ALTER FUNCTION credits_internal.credits_topup_on_role_change() SET SCHEMA public;

ALTER FUNCTION credits_internal.allocate_on_signup() RENAME TO credits_allocate_on_signup;
ALTER FUNCTION credits_internal.credits_allocate_on_signup() SET SCHEMA public;

ALTER FUNCTION credits_internal.refuse_log_change() RENAME TO credits_refuse_log_change;
ALTER FUNCTION credits_internal.credits_refuse_log_change() SET SCHEMA public;
