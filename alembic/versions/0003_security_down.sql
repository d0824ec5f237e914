-- credits-db 0003 downgrade: takes back what 0003 granted and created in this
-- database and restores the 0002 function bodies, in reverse order.
--
-- Kept on purpose:
--   * the roles credits_user and credits_admin, and the memberships granted to
--     Supabase's authenticated and service_role: roles are cluster-wide, and
--     another database on the server may use them. Drop them by hand once no
--     database needs them (DROP ROLE refuses while any privilege remains);
--   * the revocations from anon, authenticated and service_role: handing them
--     ALL on the credits tables and functions again would reopen the hole
--     0003 closed (TRUNCATE of balances, grant_credits for anyone).

DROP INDEX credit_usage_log_actor_history_idx;

-- ---- 024_grants.sql ----
-- The privileges a NOINHERIT authenticated or service_role got directly on
-- PostgreSQL 15 (the REVOKEs are no-ops where nothing was granted).
DO $credits_noinherit_members$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('authenticated', 'service_role')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION credits_current_user_id(),'
                       ' get_credit_balance(uuid), debit_credits(uuid, integer, text, text, text),'
                       ' backfill_user_credits(boolean, integer),'
                       ' grant_credits(uuid, integer, text, text, text), refund_credits(bigint, text),'
                       ' add_team_member(uuid, uuid), remove_team_member(uuid, uuid),'
                       ' verify_credit_integrity(), credit_allocation_report() FROM %I', v_role);
        EXECUTE format('REVOKE SELECT ON credits_db_install, role_credits, user_credits,'
                       ' credit_usage_log, team_credit_sharing, credits_backfill_candidates'
                       ' FROM %I', v_role);
    END LOOP;
END
$credits_noinherit_members$;
REVOKE EXECUTE ON FUNCTION backfill_user_credits(boolean, integer),
                           grant_credits(uuid, integer, text, text, text),
                           refund_credits(bigint, text),
                           add_team_member(uuid, uuid),
                           remove_team_member(uuid, uuid),
                           verify_credit_integrity(),
                           credit_allocation_report()
    FROM credits_admin;
REVOKE EXECUTE ON FUNCTION get_credit_balance(uuid),
                           debit_credits(uuid, integer, text, text, text)
    FROM credits_user, credits_admin;
REVOKE SELECT ON credits_db_install, role_credits, user_credits, credit_usage_log,
                 team_credit_sharing, credits_backfill_candidates FROM credits_admin;
REVOKE SELECT ON user_credits, credit_usage_log, team_credit_sharing FROM credits_user;
REVOKE USAGE ON SCHEMA public FROM credits_user, credits_admin;
-- USAGE on public stays with authenticated and service_role: Supabase grants
-- it to them itself.

-- ---- 023_row_level_security.sql ----
DROP POLICY credits_visible_rows ON credit_usage_log;
DROP POLICY credits_visible_rows ON user_credits;
DROP POLICY credits_visible_rows ON team_credit_sharing;
ALTER TABLE team_credit_sharing DISABLE ROW LEVEL SECURITY;
ALTER TABLE credit_usage_log DISABLE ROW LEVEL SECURITY;
ALTER TABLE user_credits DISABLE ROW LEVEL SECURITY;

-- ---- 006-020: search_path as 0001 and 0002 set it ----
ALTER FUNCTION credits_refuse_log_change() SET search_path = pg_catalog, public;
ALTER FUNCTION credits_allocate_on_signup() SET search_path = pg_catalog, public;
ALTER FUNCTION backfill_user_credits(boolean, integer) SET search_path = pg_catalog, public;
ALTER FUNCTION credit_allocation_report() SET search_path = pg_catalog, public;
ALTER FUNCTION credits_replayed_result(credit_usage_log) SET search_path = pg_catalog, public;
ALTER FUNCTION add_team_member(uuid, uuid) SET search_path = pg_catalog, public;
ALTER FUNCTION remove_team_member(uuid, uuid) SET search_path = pg_catalog, public;
ALTER FUNCTION grant_credits(uuid, integer, text, text, text) SET search_path = pg_catalog, public;
ALTER FUNCTION refund_credits(bigint, text) SET search_path = pg_catalog, public;
ALTER FUNCTION credits_topup_on_role_change() SET search_path = pg_catalog, public;
ALTER FUNCTION verify_credit_integrity() SET search_path = pg_catalog, public;

-- ---- 018_get_credit_balance.sql: the 0002 definition ----
-- What a user can spend right now. One statement, so own balance, pool
-- membership and pool balance come from one snapshot and agree with each
-- other. spendable is the largest amount a single debit_credits call would
-- accept: debits are never split, so it is the larger of the two balances,
-- not their sum. A NULL id is an unknown user (CR005).
CREATE OR REPLACE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_result jsonb;
BEGIN
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
    'Own balance, team pool and spendable (the largest single debit accepted now) of one user; CR005 if unknown.';

-- ---- 015_debit_credits.sql: the 0002 definition ----
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
-- Argument errors, checked in this order: NULL user CR005, NULL or non-positive
-- amount CR006, NULL or empty source 22023, empty or over-255-character key 22023.
CREATE OR REPLACE FUNCTION debit_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'usage',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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
    'Spend p_amount from the own account, else wholly from the team pool; CR001 if neither can pay. Keyed calls replay (replayed = true) instead of spending twice.';

-- ---- 022_current_user_id.sql ----
DROP FUNCTION credits_current_user_id();

-- ---- 021_roles.sql ----
-- Nothing: the roles and their memberships stay (see above).
