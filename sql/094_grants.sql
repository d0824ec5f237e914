-- Privileges, all explicit. Every function has had EXECUTE revoked from PUBLIC
-- where it was created; here each role gets exactly what it may call. The
-- trigger functions and credits_internal.replayed_result (an internal helper) are
-- granted to nobody: triggers fire without an EXECUTE check, and the helper
-- is only called from inside the SECURITY DEFINER functions, as the owner.
--
-- Every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp and
-- qualifies every object of ours with public. public is left out on purpose:
-- a role that may CREATE there could otherwise add an overload that matches a
-- call better than the intended function (public.pg_has_role(name, text,
-- text) beats pg_catalog's for two literals) and have it run as the owner.
-- pg_temp is named, and last: a search path that leaves it out still searches
-- the session's temporary schema first for tables and types, and it is never
-- searched for functions or operators.
GRANT USAGE ON SCHEMA public, credits_internal TO credits_user, credits_admin;

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
        EXECUTE format('REVOKE ALL ON TABLE credits_internal.install_record, public.role_credits,'
                       ' public.user_credits, public.credit_usage_log,'
                       ' public.team_credit_sharing, public.credits_backfill_candidates,'
                       ' public.credit_idempotency_keys, public.credit_allocation_failures,'
                       ' public.credit_lots, public.credit_lot_takes FROM %I',
                       v_role);
        EXECUTE format('REVOKE ALL ON SEQUENCE public.credit_usage_log_id_seq,'
                       ' public.team_credit_sharing_id_seq, public.credit_lots_id_seq FROM %I',
                       v_role);
        EXECUTE format('REVOKE ALL ON FUNCTION'
                       ' credits_internal.refuse_log_change(),'
                       ' credits_internal.allocate_on_signup(),'
                       ' credits_internal.backfill(boolean, integer, boolean, uuid),'
                       ' public.backfill_user_credits(boolean, integer),'
                       ' public.backfill_user_credits_batch(uuid, integer),'
                       ' public.credit_allocation_report(),'
                       ' public.add_team_member(uuid, uuid),'
                       ' public.remove_team_member(uuid, uuid),'
                       ' public.debit_credits(uuid, integer, text, text, text),'
                       ' public.grant_credits(uuid, integer, text, text, text, timestamptz, integer),'
                       ' public.expire_credits(timestamptz, integer),'
                       ' public.renew_allowances(timestamptz, integer),'
                       ' public.get_credit_lots(uuid),'
                       ' credits_internal.allowance_period(timestamptz, interval, timestamptz),'
                       ' credits_internal.schedule_renewals(),'
                       ' credits_internal.lock_allocation_roles(text[]),'
                       ' credits_internal.take_from_lots(uuid, uuid, integer, text, text, text),'
                       ' credits_internal.lot_summary(uuid),'
                       ' public.refund_credits(bigint, text),'
                       ' public.get_credit_balance(uuid),'
                       ' credits_internal.topup_on_role_change(),'
                       ' public.verify_credit_integrity(),'
                       ' public.credits_current_user_id() FROM %I', v_role);
    END LOOP;
END
$credits_revoke_api_roles$;

-- Reading: credits_user its own rows (row level security, 093), credits_admin
-- everything. Writing: nobody but the owner.
GRANT SELECT ON user_credits, credit_usage_log, team_credit_sharing, credit_idempotency_keys,
                credit_allocation_failures, credit_lots, credit_lot_takes
    TO credits_user;
GRANT SELECT ON credits_internal.install_record, role_credits, user_credits, credit_usage_log,
                team_credit_sharing, credits_backfill_candidates, credit_idempotency_keys,
                credit_allocation_failures, credit_lots, credit_lot_takes
    TO credits_admin;

GRANT EXECUTE ON FUNCTION credits_current_user_id(),
                          credits_internal.current_user_id(),
                          get_credit_balance(uuid),
                          get_credit_lots(uuid),
                          debit_credits(uuid, integer, text, text, text)
    TO credits_user, credits_admin;
GRANT EXECUTE ON FUNCTION backfill_user_credits(boolean, integer),
                          backfill_user_credits_batch(uuid, integer),
                          grant_credits(uuid, integer, text, text, text, timestamptz, integer),
                          refund_credits(bigint, text),
                          expire_credits(timestamptz, integer),
                          renew_allowances(timestamptz, integer),
                          add_team_member(uuid, uuid),
                          remove_team_member(uuid, uuid),
                          verify_credit_integrity(),
                          credit_allocation_report()
    TO credits_admin;

-- PostgreSQL 15 has no per-grant INHERIT: a NOINHERIT member (Supabase's
-- authenticated and service_role, see 091) gets nothing from its membership,
-- so it gets the same privileges directly. On 16+ the membership inherits.
DO $credits_noinherit_members$
BEGIN
    IF current_setting('server_version_num')::integer >= 160000 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated' AND NOT rolinherit)
       AND pg_catalog.pg_has_role('authenticated', 'credits_user', 'MEMBER') THEN
        GRANT USAGE ON SCHEMA public, credits_internal TO authenticated;
        GRANT SELECT ON user_credits, credit_usage_log, team_credit_sharing, credit_lots,
                        credit_lot_takes
            TO authenticated;
        GRANT EXECUTE ON FUNCTION credits_current_user_id(),
                                  credits_internal.current_user_id(),
                                  get_credit_balance(uuid),
                                  get_credit_lots(uuid),
                                  debit_credits(uuid, integer, text, text, text)
            TO authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role' AND NOT rolinherit)
       AND pg_catalog.pg_has_role('service_role', 'credits_admin', 'MEMBER') THEN
        GRANT USAGE ON SCHEMA public, credits_internal TO service_role;
        GRANT SELECT ON credits_internal.install_record, role_credits, user_credits, credit_usage_log,
                        team_credit_sharing, credits_backfill_candidates, credit_allocation_failures,
                        credit_lots, credit_lot_takes
            TO service_role;
        GRANT EXECUTE ON FUNCTION credits_current_user_id(),
                                  credits_internal.current_user_id(),
                                  get_credit_balance(uuid),
                                  debit_credits(uuid, integer, text, text, text),
                                  backfill_user_credits(boolean, integer),
                                  backfill_user_credits_batch(uuid, integer),
                                  grant_credits(uuid, integer, text, text, text, timestamptz,
                                                integer),
                                  get_credit_lots(uuid),
                                  refund_credits(bigint, text),
                                  expire_credits(timestamptz, integer),
                                  renew_allowances(timestamptz, integer),
                                  add_team_member(uuid, uuid),
                                  remove_team_member(uuid, uuid),
                                  verify_credit_integrity(),
                                  credit_allocation_report()
            TO service_role;
    END IF;
END
$credits_noinherit_members$;
