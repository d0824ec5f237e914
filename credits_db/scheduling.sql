-- The statements `credits-db schedule` sends (credits_db/scheduling.py): where
-- pg_cron runs, whether credits-db is there to be run, and pg_cron's own
-- functions to create, replace and remove the two jobs. pg_cron's functions are
-- called with named arguments, so no overload of its older versions can match.
-- Sections are named "-- name: <query>" and parsed as credits_db/queries.sql is.

-- name: here
-- This connection's database and login.
SELECT jsonb_build_object('database', current_database(), 'login', current_user);

-- name: cron_database_name
-- pg_cron's database: the setting exists only where the server loaded pg_cron
-- (shared_preload_libraries), else this is NULL. pg_cron 1.4 lets only superusers
-- and members of pg_read_all_settings read it (42501 for anyone else).
SELECT current_setting('cron.database_name', true);

-- name: credits_db_state
-- Whether the jobs' commands can run here: credits-db at revision 0011 or later
-- (renew_allowances and expire_credits exist), and this login may execute both
-- (the jobs run as the login that schedules them).
SELECT jsonb_build_object(
    'installed', r.oid IS NOT NULL AND e.oid IS NOT NULL,
    'may_run', r.oid IS NOT NULL AND e.oid IS NOT NULL
               AND has_function_privilege(r.oid, 'EXECUTE')
               AND has_function_privilege(e.oid, 'EXECUTE'))
FROM (SELECT to_regprocedure('public.renew_allowances(timestamptz, integer)')::oid AS oid) r,
     (SELECT to_regprocedure('public.expire_credits(timestamptz, integer)')::oid AS oid) e;

-- name: pg_cron_version
-- The pg_cron extension's version in this database, NULL where it was never created.
SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron');

-- name: jobs
-- This login's jobs of these names (pg_cron's row level security shows a login
-- its own jobs only; a job is unique per name and login).
SELECT coalesce(jsonb_agg(jsonb_build_object('jobid', j.jobid, 'jobname', j.jobname,
                                             'schedule', j.schedule, 'command', j.command,
                                             'database', j.database, 'username', j.username,
                                             'active', j.active)
                          ORDER BY j.jobname), '[]'::jsonb)
FROM cron.job j
WHERE j.jobname = ANY (%(names)s::text[]) AND j.username = current_user;

-- name: schedule
-- Create the job, or replace the schedule and command of this login's job of
-- that name, in pg_cron's own database.
SELECT cron.schedule(job_name => %(name)s::text, schedule => %(schedule)s::text,
                     command => %(command)s::text);

-- name: schedule_in_database
-- The same, for a job that runs in another database of the server (pg_cron 1.4+).
SELECT cron.schedule_in_database(job_name => %(name)s::text, schedule => %(schedule)s::text,
                                 command => %(command)s::text, database => %(database)s::text);

-- name: unschedule
-- Remove one job (by id: the name form fails when the job is gone already).
SELECT cron.unschedule(job_id => %(jobid)s::bigint);
