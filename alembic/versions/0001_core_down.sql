-- credits-db 0001 downgrade: removes what 0001 created and nothing else.
-- The users table goes only if this package created it AND it holds no rows:
-- rows in it are the host application's data, which a downgrade never drops.
DROP FUNCTION credit_allocation_report();
DROP FUNCTION backfill_user_credits(boolean, integer);
DROP VIEW credits_backfill_candidates;
DROP TRIGGER users_allocate_credits ON users;
DROP FUNCTION credits_allocate_on_signup();
DROP TABLE credit_usage_log;
DROP FUNCTION credits_refuse_log_change();
DROP TABLE user_credits;
DROP TABLE role_credits;

DO $drop_users$
BEGIN
    IF (SELECT created_users_table FROM credits_db_install) THEN
        IF EXISTS (SELECT 1 FROM public.users) THEN
            RAISE NOTICE 'credits-db: keeping public.users (created by credits-db, but it now holds rows)';
        ELSE
            DROP TABLE public.users;
        END IF;
    END IF;
END
$drop_users$;

DROP TABLE credits_db_install;
