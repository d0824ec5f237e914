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
CREATE FUNCTION debit_credits(
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
    v_earlier   bigint;
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

    -- One condition on the way to the keyed and pool paths: PL/pgSQL compiles
    -- each condition it evaluates once per transaction, so four tests in a row
    -- cost four compilations on every call. Which argument is bad is worked out
    -- only when one is.
    IF p_user_id IS NULL OR p_amount IS NULL OR p_amount <= 0 OR p_source IS NULL
       OR p_source = '' OR p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        IF p_user_id IS NULL THEN
            RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
        ELSIF p_amount IS NULL OR p_amount <= 0 THEN
            RAISE EXCEPTION 'invalid amount %: a debit must be a positive integer',
                coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
        ELSIF p_source IS NULL OR p_source = '' THEN
            RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
        ELSE
            -- A longer key might not fit the unique index (54000): refuse it by name.
            RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
                USING ERRCODE = '22023';
        END IF;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        -- Every statement below starts after the lock is granted, so it sees
        -- the entry of any earlier call with this key that committed.
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.idempotency:' || p_user_id::text || ':' || p_idempotency_key, 0));

        -- One statement: look for the caller's earlier entry with this key and,
        -- only if there is none, debit the own account and log it.
        -- The earlier entry: a debit row first (a grant to the caller's own
        -- account under the same key must not hide the debit this call is a
        -- retry of). Two branches, one per index: an OR across user_id and
        -- actor_user_id would leave the key alone as the index condition and
        -- scan every keyed row ever written.
        WITH earlier AS (
            SELECT e.id
            FROM (
                SELECT l.id, l.type FROM credit_usage_log l
                WHERE l.user_id = p_user_id AND l.idempotency_key = p_idempotency_key
                  AND l.actor_user_id IS NULL
                UNION ALL
                SELECT l.id, l.type FROM credit_usage_log l
                WHERE l.actor_user_id = p_user_id AND l.idempotency_key = p_idempotency_key
            ) AS e
            ORDER BY e.type = 'debit' DESC, e.id
            LIMIT 1
        ), debited AS (
            UPDATE user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount
              AND NOT EXISTS (SELECT FROM earlier)
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO credit_usage_log
                (user_id, amount, type, source, description, idempotency_key)
            SELECT p_user_id, -p_amount, 'debit', p_source, p_description, p_idempotency_key
            FROM debited
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id
        )
        SELECT x.earlier_id, x.remaining,
               -- The result is built here, not in a RETURN expression: one
               -- condition below instead of three on the way out.
               CASE WHEN x.log_id IS NOT NULL THEN jsonb_build_object(
                   'log_id', x.log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                   'amount', p_amount, 'remaining_credits', x.remaining,
                   'from_team_pool', false, 'replayed', false) END
        INTO v_earlier, v_remaining, v_result
        FROM (SELECT (SELECT id FROM earlier) AS earlier_id,
                     (SELECT remaining_credits FROM debited) AS remaining,
                     (SELECT id FROM logged) AS log_id) AS x;

        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;

        IF v_earlier IS NOT NULL THEN
            SELECT * INTO v_entry FROM credit_usage_log l WHERE l.id = v_earlier;
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

        IF v_remaining IS NOT NULL THEN
            -- Debited but not logged: the key is another call's on this
            -- account. Raising rolls the debit back with everything else.
            RAISE EXCEPTION 'idempotency key % was already used on this account by another call',
                p_idempotency_key
                USING ERRCODE = 'CR007', DETAIL = format('account %s', p_user_id);
        END IF;
    END IF;

    -- The own account could not pay (or has no balance row yet): the pool.
    -- One statement finds the pool, debits it and logs the entry, so the pool
    -- row, which every member of the team contends for, is locked only for
    -- the rest of this statement and the commit.
    WITH pool AS (
        SELECT t.team_admin_id FROM team_credit_sharing t WHERE t.team_member_id = p_user_id
    ), debited AS (
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = (SELECT team_admin_id FROM pool) AND remaining_credits >= p_amount
        RETURNING user_id, remaining_credits
    ), logged AS (
        INSERT INTO credit_usage_log
            (user_id, actor_user_id, amount, type, source, description, idempotency_key)
        SELECT d.user_id, p_user_id, -p_amount, 'debit', p_source, p_description,
               p_idempotency_key
        FROM debited d
        ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT x.admin_id, x.remaining,
           CASE WHEN x.log_id IS NOT NULL THEN jsonb_build_object(
               'log_id', x.log_id, 'account_user_id', x.admin_id, 'actor_user_id', p_user_id,
               'amount', p_amount, 'remaining_credits', x.remaining,
               'from_team_pool', true, 'replayed', false) END
    INTO v_admin, v_remaining, v_result
    FROM (SELECT (SELECT team_admin_id FROM pool) AS admin_id,
                 (SELECT remaining_credits FROM debited) AS remaining,
                 (SELECT id FROM logged) AS log_id) AS x;

    IF v_result IS NOT NULL THEN
        RETURN v_result;
    ELSIF v_remaining IS NOT NULL THEN
        -- Debited but not logged: the key is another call's on the pool account.
        RAISE EXCEPTION 'idempotency key % was already used on the team pool account by another call',
            p_idempotency_key
            USING ERRCODE = 'CR007', DETAIL = format('team pool account %s', v_admin);
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
