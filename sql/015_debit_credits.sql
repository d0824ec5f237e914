-- Spends credits: from the user's own account if it can pay the whole amount,
-- else from their team admin's account if that can, else CR001. Never split: a
-- debit is one log row on one account. An account holding tracked lots (an
-- expiry or a priority, 026) is debited lot by lot (027); one without, as
-- every account was before lots, by the statements below alone.
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
-- Idempotency: a key belongs to the caller, p_user_id, whichever account the
-- entry lands on (credit_idempotency_keys, 026): the caller's earlier entry
-- for a key is found whatever pool they are in now, so leaving a team cannot
-- turn a retry into a second debit, and no other caller (a pool's admin, a
-- fellow member) can take, block or probe it. Racing calls by one caller with
-- one key queue on a transaction-scoped advisory lock on (caller, key); at
-- READ COMMITTED the later one then sees the winner's key and replays. At
-- REPEATABLE READ and SERIALIZABLE its snapshot predates the winner's commit:
-- inserting the key then conflicts with a row the snapshot cannot see, which
-- PostgreSQL refuses with 40001, so the caller retries (and replays) instead
-- of debiting twice. The key of a refused call stays free.
--
-- A user deleted while a keyed debit runs: the caller's users row is locked
-- FOR KEY SHARE before anything is written (the lock the key's foreign key
-- check takes, which then finds it held), so the deletion, whose cascade
-- removes the user's keys, waits for the debit; or the debit finds the user
-- gone (CR005). A re-created id never inherits a key.
--
-- Argument errors, checked in this order (after the permission check below): NULL user CR005, NULL or non-positive
-- amount CR006, NULL or empty source 22023, empty or over-255-character key 22023.
--
-- Permission: a caller who is a member of credits_admin (a
-- superuser counts as a member) may debit any account; anyone else only their
-- own, credits_current_user_id(), else 42501 (a NULL p_user_id included). The
-- function runs as its owner (SECURITY DEFINER changes current_user), but not
-- the `role` setting: the calling role is that setting, or session_user when
-- no SET ROLE is in effect. A nested caller (another SECURITY DEFINER function
-- calling this one) is therefore judged by the session's role, not by that
-- function's owner. The role lookup runs first: it is a cached catalog check,
-- cheaper than credits_current_user_id(), so an admin caller never pays for
-- the latter.
--
-- Names: search_path is pg_catalog (and pg_temp, last, never searched for
-- functions or operators), and every object of ours is qualified, so nothing
-- anyone creates in public can be called in place of ours.
CREATE FUNCTION debit_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'usage',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_earlier   bigint;
    v_earlier_remaining integer;
    v_remaining integer;
    v_admin     uuid;
    v_entry     public.credit_usage_log;
    v_own       text;
    v_pool      text;
    v_result    jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not spend the credits of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  DETAIL = format('caller %s is user %s and not a member of credits_admin',
                                  coalesce(nullif(current_setting('role'), 'none'), session_user),
                                  coalesce(credits_internal.current_user_id()::text, 'NULL')),
                  HINT = 'A credits_user may debit only its own account (credits_current_user_id()).';
    END IF;

    -- The hot path: one statement. Its WHERE also refuses invalid arguments (a
    -- NULL matches nothing), so they cost nothing here and are named below.
    -- p_amount > 0 also keeps -p_amount (folded when the statement is planned)
    -- from overflowing for -2^31: that amount is named as CR006 below.
    IF p_idempotency_key IS NULL AND p_amount > 0 THEN
        WITH debited AS (
            UPDATE public.user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount
              AND tracked_credits = 0 AND p_amount > 0 AND p_source <> ''
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
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
            -- A longer key might not fit the key's index (54000): refuse it by name.
            RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
                USING ERRCODE = '22023';
        END IF;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        -- Every statement below starts after the lock is granted, so at READ
        -- COMMITTED it sees the key of any earlier call that committed.
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.idempotency:' || p_user_id::text || ':' || p_idempotency_key, 0::bigint));
        PERFORM 1 FROM public.users u WHERE u.id = p_user_id FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
        END IF;

        -- One statement: look for the caller's key and, only if there is none,
        -- debit the own account, log it and take the key.
        WITH earlier AS (
            SELECT k.log_id, k.remaining_credits FROM public.credit_idempotency_keys k
            WHERE k.owner_user_id = p_user_id AND k.operation = 'debit'
              AND k.idempotency_key = p_idempotency_key
        ), debited AS (
            UPDATE public.user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount
              AND tracked_credits = 0 AND NOT EXISTS (SELECT FROM earlier)
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO public.credit_usage_log
                (user_id, amount, type, source, description, idempotency_key)
            SELECT p_user_id, -p_amount, 'debit', p_source, p_description, p_idempotency_key
            FROM debited
            RETURNING id
        ), keyed AS (
            INSERT INTO public.credit_idempotency_keys
                (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
            SELECT p_user_id, 'debit', p_idempotency_key, logged.id, debited.remaining_credits
            FROM logged, debited
            ON CONFLICT DO NOTHING
            RETURNING log_id
        )
        SELECT x.earlier_id, x.earlier_remaining, x.remaining,
               -- The result is built here, not in a RETURN expression: one
               -- condition below instead of three on the way out.
               CASE WHEN x.log_id IS NOT NULL THEN jsonb_build_object(
                   'log_id', x.log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                   'amount', p_amount, 'remaining_credits', x.remaining,
                   'from_team_pool', false, 'replayed', false) END
        INTO v_earlier, v_earlier_remaining, v_remaining, v_result
        FROM (SELECT (SELECT log_id FROM earlier) AS earlier_id,
                     (SELECT remaining_credits FROM earlier) AS earlier_remaining,
                     (SELECT remaining_credits FROM debited) AS remaining,
                     (SELECT log_id FROM keyed) AS log_id) AS x;

        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;

        IF v_earlier IS NOT NULL THEN
            SELECT * INTO v_entry FROM public.credit_usage_log l WHERE l.id = v_earlier;
            IF v_entry.type <> 'debit' OR v_entry.amount <> -p_amount
               OR v_entry.source <> p_source THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s; this call: debit of %s, source %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, p_amount, p_source);
            END IF;
            RETURN credits_internal.replayed_result(v_entry, v_earlier_remaining);
        END IF;

        IF v_remaining IS NOT NULL THEN
            -- Debited but the key was taken meanwhile, which the lock above
            -- rules out: refuse rather than write an entry without its key.
            -- Raising rolls the debit back with everything else.
            RAISE EXCEPTION 'idempotency key % was taken by a concurrent call', p_idempotency_key
                USING ERRCODE = '40001', HINT = 'Retry the call: it will replay.';
        END IF;
    END IF;

    -- An own account holding tracked lots (026) is debited lot by lot, in
    -- spending order; the statements above leave it alone. This look is a
    -- new snapshot: a sweep may have expired the last tracked credits since
    -- the hot path refused, so an account that can pay now goes there too
    -- (take_from_lots decides on the locked row), never on to the pool.
    PERFORM 1 FROM public.user_credits uc
    WHERE uc.user_id = p_user_id AND (uc.tracked_credits > 0 OR uc.remaining_credits >= p_amount);
    IF FOUND THEN
        v_result := credits_internal.take_from_lots(p_user_id, NULL, p_amount, p_source,
                                                    p_description, p_idempotency_key);
        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;
    END IF;

    -- The own account could not pay (or has no balance row yet): the pool.
    -- One statement finds the pool, debits it, logs the entry and takes the
    -- key, so the pool row, which every member of the team contends for, is
    -- locked only for the rest of this statement and the commit.
    WITH pool AS (
        SELECT t.team_admin_id FROM public.team_credit_sharing t
        WHERE t.team_member_id = p_user_id
    ), debited AS (
        UPDATE public.user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = (SELECT team_admin_id FROM pool) AND remaining_credits >= p_amount
          AND tracked_credits = 0
        RETURNING user_id, remaining_credits
    ), logged AS (
        INSERT INTO public.credit_usage_log
            (user_id, actor_user_id, amount, type, source, description, idempotency_key)
        SELECT d.user_id, p_user_id, -p_amount, 'debit', p_source, p_description,
               p_idempotency_key
        FROM debited d
        RETURNING id
    ), keyed AS (
        INSERT INTO public.credit_idempotency_keys
            (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
        SELECT p_user_id, 'debit', p_idempotency_key, logged.id, debited.remaining_credits
        FROM logged, debited
        WHERE p_idempotency_key IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING log_id
    )
    SELECT x.admin_id, x.remaining,
           CASE WHEN x.log_id IS NOT NULL
                     AND (p_idempotency_key IS NULL OR x.key_log_id IS NOT NULL)
                THEN jsonb_build_object(
               'log_id', x.log_id, 'account_user_id', x.admin_id, 'actor_user_id', p_user_id,
               'amount', p_amount, 'remaining_credits', x.remaining,
               'from_team_pool', true, 'replayed', false) END
    INTO v_admin, v_remaining, v_result
    FROM (SELECT (SELECT team_admin_id FROM pool) AS admin_id,
                 (SELECT remaining_credits FROM debited) AS remaining,
                 (SELECT id FROM logged) AS log_id,
                 (SELECT log_id FROM keyed) AS key_log_id) AS x;

    IF v_result IS NOT NULL THEN
        RETURN v_result;
    ELSIF v_remaining IS NOT NULL THEN
        -- Debited, but the key was taken meanwhile (ruled out by the lock).
        RAISE EXCEPTION 'idempotency key % was taken by a concurrent call', p_idempotency_key
            USING ERRCODE = '40001', HINT = 'Retry the call: it will replay.';
    END IF;

    -- A pool holding tracked lots, likewise.
    IF v_admin IS NOT NULL THEN
        PERFORM 1 FROM public.user_credits uc
        WHERE uc.user_id = v_admin AND (uc.tracked_credits > 0 OR uc.remaining_credits >= p_amount);
        IF FOUND THEN
            v_result := credits_internal.take_from_lots(v_admin, p_user_id, p_amount, p_source,
                                                        p_description, p_idempotency_key);
            IF v_result IS NOT NULL THEN
                RETURN v_result;
            END IF;
        END IF;
    END IF;

    -- Refused: only now is it worth telling an unknown user from a poor one.
    PERFORM 1 FROM public.users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    -- What is left of a balance past the lots that lapsed is said beside it.
    SELECT uc.remaining_credits::text
           || CASE WHEN s.spendable <> uc.remaining_credits
                   THEN format(' (spendable %s)', s.spendable) ELSE '' END
    INTO v_own
    FROM public.user_credits uc,
         LATERAL (SELECT (credits_internal.lot_summary(uc.user_id)->>'spendable_credits')::integer
                      AS spendable) s
    WHERE uc.user_id = p_user_id;
    IF v_admin IS NOT NULL THEN
        SELECT uc.remaining_credits::text
               || CASE WHEN s.spendable <> uc.remaining_credits
                       THEN format(' (spendable %s)', s.spendable) ELSE '' END
        INTO v_pool
        FROM public.user_credits uc,
             LATERAL (SELECT (credits_internal.lot_summary(uc.user_id)->>'spendable_credits')::integer
                          AS spendable) s
        WHERE uc.user_id = v_admin;
    END IF;
    RAISE EXCEPTION 'insufficient credits: % requested', p_amount
        USING ERRCODE = 'CR001',
              DETAIL = format('own remaining %s; team pool %s',
                              coalesce(v_own, 'none (no balance yet)'),
                              CASE WHEN v_admin IS NULL THEN 'none (not in a team)'
                                   ELSE format('of %s remaining %s', v_admin,
                                               coalesce(v_pool, 'none'))
                              END);
END
$$;

REVOKE EXECUTE ON FUNCTION debit_credits(uuid, integer, text, text, text) FROM PUBLIC;

COMMENT ON FUNCTION debit_credits(uuid, integer, text, text, text) IS
    'Spend p_amount from the own account, else wholly from the team pool; CR001 if neither can pay. Keyed calls replay (replayed = true) instead of spending twice. Only credits_admin members may debit another user''s account (else 42501).';
