-- Row level security on the five tables credits_user may read. "Me" below is
-- credits_current_user_id(), evaluated once per query (the sub-SELECTs make
-- it, and the admin test, InitPlans rather than calls per row).
--   user_credits:        my balance row, and my team pool's (the row of the
--                        admin whose pool I am in: what I may spend from);
--   credit_usage_log:    entries on my account (for a team admin that
--                        includes the pool debits their members made), and
--                        entries I caused on another account (my pool debits
--                        and their refunds, actor_user_id = me);
--   team_credit_sharing: my memberships, as admin or as member;
--   credit_idempotency_keys: the keys I own;
--   credit_allocation_failures: my failed signup allocation.
-- A member of credits_admin sees every row. "Member" is pg_has_role(...,
-- 'MEMBER'), as in debit_credits: it holds for a NOINHERIT member such as
-- Supabase's service_role too, which a policy "TO credits_admin" would miss.
-- For the same reason the policies are for every role (TO PUBLIC): who may
-- read at all is decided by the SELECT privilege (094); the policy decides
-- which rows.
--
-- Only SELECT policies exist: with row level security on and no INSERT,
-- UPDATE or DELETE policy, a direct write by anyone but the owner touches no
-- row even where a table privilege was granted (credits_user and
-- credits_admin hold none, see 094).
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

ALTER TABLE credit_idempotency_keys ENABLE ROW LEVEL SECURITY;

CREATE POLICY credits_visible_rows ON credit_idempotency_keys
    FOR SELECT
    USING ((SELECT pg_catalog.pg_has_role('credits_admin', 'MEMBER'))
           OR owner_user_id = (SELECT public.credits_current_user_id()));

ALTER TABLE credit_allocation_failures ENABLE ROW LEVEL SECURITY;

CREATE POLICY credits_visible_rows ON credit_allocation_failures
    FOR SELECT
    USING ((SELECT pg_catalog.pg_has_role('credits_admin', 'MEMBER'))
           OR user_id = (SELECT public.credits_current_user_id()));

-- Lots (026): mine and my team pool's, as user_credits; the takes of my
-- lots. Read through the policy of credit_lots, which shows me only those.
ALTER TABLE credit_lots ENABLE ROW LEVEL SECURITY;

CREATE POLICY credits_visible_rows ON credit_lots
    FOR SELECT
    USING ((SELECT pg_catalog.pg_has_role('credits_admin', 'MEMBER'))
           OR user_id = (SELECT public.credits_current_user_id())
           OR user_id IN (SELECT t.team_admin_id FROM public.team_credit_sharing t
                          WHERE t.team_member_id = (SELECT public.credits_current_user_id())));

ALTER TABLE credit_lot_takes ENABLE ROW LEVEL SECURITY;

CREATE POLICY credits_visible_rows ON credit_lot_takes
    FOR SELECT
    USING ((SELECT pg_catalog.pg_has_role('credits_admin', 'MEMBER'))
           OR lot_id IN (SELECT l.id FROM public.credit_lots l));
