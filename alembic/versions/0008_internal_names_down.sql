-- credits-db 0008, downgrade: the names 0007 left.
ALTER INDEX credits_internal.install_record_pkey RENAME TO credits_db_install_pkey;
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
