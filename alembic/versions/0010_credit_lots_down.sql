-- credits-db 0010 down: back to 0009. Functions as the landed
-- revisions left them (written by scripts/new_revision.py). The lots, their
-- takes, the log's lot_id and the balances' tracked_credits go; the log's
-- constraints admit credits and debits only again.
--
-- Refused (55000) while any lot has an expiry or any 'expire' entry exists:
-- 0009 knows no expiry, so its balances would make expiring credits last
-- forever and its verify_credit_integrity() could not explain the expired
-- ones. Spend, or expire and remove, them first, or stay at 0010.

DO $credits_lots_in_use$
BEGIN
    IF EXISTS (SELECT 1 FROM public.credit_lots WHERE expires_at IS NOT NULL)
       OR EXISTS (SELECT 1 FROM public.credit_usage_log WHERE type = 'expire') THEN
        RAISE EXCEPTION 'credits-db: cannot downgrade below 0010: credits with an expiry exist'
            USING ERRCODE = '55000',
                  DETAIL = 'Revision 0009 has no expiry: expiring credits would never expire and expired ones would break its integrity check.',
                  HINT = 'Stay at revision 0010 or later.';
    END IF;
END
$credits_lots_in_use$;

-- The lots' policies and grants go with their tables (below).

-- ---- debit_credits(uuid, integer, text, text, text): as revision 0007 defined it ----
CREATE OR REPLACE FUNCTION debit_credits(
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
    v_own       integer;
    v_pool      integer;
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
              AND p_amount > 0 AND p_source <> ''
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
              AND NOT EXISTS (SELECT FROM earlier)
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

    -- Refused: only now is it worth telling an unknown user from a poor one.
    PERFORM 1 FROM public.users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    SELECT uc.remaining_credits INTO v_own FROM public.user_credits uc WHERE uc.user_id = p_user_id;
    IF v_admin IS NOT NULL THEN
        SELECT uc.remaining_credits INTO v_pool FROM public.user_credits uc WHERE uc.user_id = v_admin;
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

COMMENT ON FUNCTION debit_credits(uuid, integer, text, text, text) IS
    'Spend p_amount from the own account, else wholly from the team pool; CR001 if neither can pay. Keyed calls replay (replayed = true) instead of spending twice. Only credits_admin members may debit another user''s account (else 42501).';

-- ---- refund_credits(bigint, text): as revision 0007 defined it ----
CREATE OR REPLACE FUNCTION refund_credits(p_log_id bigint, p_description text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_debit     public.credit_usage_log;
    v_opened    bigint;
    v_prior     bigint;
    v_remaining integer;
    v_log_id    bigint;
BEGIN
    IF p_log_id IS NULL THEN
        RAISE EXCEPTION 'nothing to refund: p_log_id is NULL' USING ERRCODE = 'CR008';
    END IF;

    SELECT l.* INTO v_debit FROM public.credit_usage_log l WHERE l.id = p_log_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'nothing to refund: no log entry %', p_log_id USING ERRCODE = 'CR008';
    END IF;
    IF v_debit.type <> 'debit' THEN
        RAISE EXCEPTION 'log entry % is not a debit', p_log_id
            USING ERRCODE = 'CR008',
                  DETAIL = format('entry %s is a %s (source %s); only debits can be refunded',
                                  p_log_id, v_debit.type, v_debit.source);
    END IF;

    SELECT uc.opened_after_log_id INTO v_opened
    FROM public.user_credits uc WHERE uc.user_id = v_debit.user_id FOR NO KEY UPDATE;
    IF NOT FOUND OR v_opened >= p_log_id THEN
        RAISE EXCEPTION 'unknown user %: the account of log entry % no longer exists',
            v_debit.user_id, p_log_id USING ERRCODE = 'CR005';
    END IF;

    SELECT l.id INTO v_prior FROM public.credit_usage_log l WHERE l.refund_of = p_log_id;
    IF FOUND THEN
        RAISE EXCEPTION 'log entry % was already refunded', p_log_id
            USING ERRCODE = 'CR008', DETAIL = format('refund entry %s', v_prior);
    END IF;

    -- v_debit.amount is negative: subtracting it adds the refund, refused (not
    -- wrapped) if the total would pass the integer range.
    UPDATE public.user_credits
    SET total_credits = total_credits - v_debit.amount, last_updated = now()
    WHERE user_id = v_debit.user_id AND total_credits <= 2147483647 + v_debit.amount
    RETURNING remaining_credits INTO v_remaining;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', -v_debit.amount
            USING ERRCODE = 'CR006';
    END IF;

    INSERT INTO public.credit_usage_log
        (user_id, actor_user_id, amount, type, source, description, refund_of)
    VALUES (v_debit.user_id, v_debit.actor_user_id, -v_debit.amount, 'credit', 'refund',
            coalesce(p_description, format('refund of entry %s', p_log_id)), p_log_id)
    RETURNING id INTO v_log_id;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', v_debit.user_id,
        'actor_user_id', v_debit.actor_user_id, 'amount', -v_debit.amount,
        'remaining_credits', v_remaining,
        'from_team_pool', v_debit.actor_user_id IS NOT NULL, 'replayed', false);
END
$$;

COMMENT ON FUNCTION refund_credits(bigint, text) IS
    'Reverse one debit onto its account (a refund credit: total_credits increases). CR008 if not a debit or already refunded.';

-- ---- get_credit_balance(uuid): as revision 0007 defined it ----
CREATE OR REPLACE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not read the balance of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  HINT = 'A credits_user may read only its own balance (credits_current_user_id()).';
    END IF;

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
    FROM public.users u
    LEFT JOIN public.user_credits own ON own.user_id = u.id
    LEFT JOIN public.team_credit_sharing t ON t.team_member_id = u.id
    LEFT JOIN public.user_credits pool ON pool.user_id = t.team_admin_id
    WHERE u.id = p_user_id;

    IF v_result IS NULL THEN
        RAISE EXCEPTION 'unknown user %', coalesce(p_user_id::text, 'NULL') USING ERRCODE = 'CR005';
    END IF;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION get_credit_balance(uuid) IS
    'Own balance, team pool and spendable (the largest single debit accepted now) of one user; CR005 if unknown. Only credits_admin members may read another user''s balance (else 42501).';

-- ---- verify_credit_integrity(): as revision 0007 defined it ----
CREATE OR REPLACE FUNCTION verify_credit_integrity() RETURNS TABLE (user_id uuid, problem text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH sums AS (
        SELECT uc.user_id, uc.total_credits, uc.used_credits, uc.remaining_credits,
               uc.allocated_credits,
               coalesce(s.total, 0) AS log_total,
               coalesce(s.granted, 0) AS log_granted,
               coalesce(s.spent, 0) AS log_spent,
               coalesce(s.allocated, 0) AS log_allocated
        FROM public.user_credits uc
        LEFT JOIN (
            SELECT l.user_id,
                   sum(l.amount) AS total,
                   sum(l.amount) FILTER (WHERE l.type = 'credit') AS granted,
                   -sum(l.amount) FILTER (WHERE l.type = 'debit') AS spent,
                   sum(l.amount) FILTER (WHERE l.type = 'credit'
                                         AND l.source IN ('signup', 'backfill', 'role_change'))
                       AS allocated
            FROM public.credit_usage_log l
            JOIN public.user_credits own
              ON own.user_id = l.user_id AND l.id > own.opened_after_log_id
            GROUP BY l.user_id
        ) s ON s.user_id = uc.user_id
    ),
    pools AS (
        SELECT t.team_admin_id, count(*) AS members, u.role,
               coalesce(rc.team_member_limit, fallback.team_member_limit, 0) AS member_limit
        FROM public.team_credit_sharing t
        JOIN public.users u ON u.id = t.team_admin_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        GROUP BY t.team_admin_id, u.role, rc.team_member_limit, fallback.team_member_limit
    )
    SELECT s.user_id, format('remaining_credits %s <> sum of log amounts %s',
                             s.remaining_credits, s.log_total)
    FROM sums s WHERE s.remaining_credits IS DISTINCT FROM s.log_total
    UNION ALL
    SELECT s.user_id, format('total_credits %s <> sum of credits %s',
                             s.total_credits, s.log_granted)
    FROM sums s WHERE s.total_credits <> s.log_granted
    UNION ALL
    SELECT s.user_id, format('used_credits %s <> sum of debits %s',
                             s.used_credits, s.log_spent)
    FROM sums s WHERE s.used_credits <> s.log_spent
    UNION ALL
    SELECT s.user_id, format('allocated_credits %s <> sum of role allocations %s',
                             s.allocated_credits, s.log_allocated)
    FROM sums s WHERE s.allocated_credits <> s.log_allocated
    UNION ALL
    SELECT s.user_id, format('negative balance: total %s, used %s, remaining %s',
                             s.total_credits, s.used_credits, s.remaining_credits)
    FROM sums s
    WHERE s.total_credits < 0 OR s.used_credits < 0 OR s.remaining_credits < 0
    UNION ALL
    SELECT r.user_id, format('refund entry %s does not reverse entry %s (%s)', r.id, r.refund_of,
                             CASE WHEN d.type <> 'debit' THEN 'not a debit'
                                  WHEN d.user_id <> r.user_id THEN 'another account'
                                  WHEN d.id <= uc.opened_after_log_id THEN 'an earlier account'
                                  WHEN r.type <> 'credit' THEN 'refund is not a credit'
                                  ELSE format('amount %s, debit %s', r.amount, d.amount)
                             END)
    FROM public.credit_usage_log r
    JOIN public.credit_usage_log d ON d.id = r.refund_of
    JOIN public.user_credits uc ON uc.user_id = r.user_id AND r.id > uc.opened_after_log_id
    WHERE d.type <> 'debit' OR d.user_id <> r.user_id OR r.type <> 'credit'
          OR r.amount <> -d.amount OR d.id <= uc.opened_after_log_id
    UNION ALL
    SELECT k.owner_user_id, format('idempotency key %s (%s) names entry %s, %s', quote_literal(k.idempotency_key),
                                   k.operation, k.log_id,
                                   CASE WHEN l.id IS NULL THEN 'which does not exist'
                                        ELSE 'which has another key or owner' END)
    FROM public.credit_idempotency_keys k
    LEFT JOIN public.credit_usage_log l ON l.id = k.log_id
    WHERE l.id IS NULL OR l.idempotency_key IS DISTINCT FROM k.idempotency_key
       OR coalesce(l.actor_user_id, l.user_id) <> k.owner_user_id
       OR (l.type = 'debit') <> (k.operation = 'debit')
    UNION ALL
    SELECT p.team_admin_id, format('team pool has %s members; role %s allows %s',
                                   p.members, coalesce(quote_literal(p.role), 'NULL'),
                                   p.member_limit)
    FROM pools p WHERE p.member_limit > 0 AND p.members > p.member_limit
    UNION ALL
    SELECT t.team_member_id, format('member of the team of %s, whose role %s allows no team',
                                    t.team_admin_id, coalesce(quote_literal(p.role), 'NULL'))
    FROM public.team_credit_sharing t
    JOIN pools p ON p.team_admin_id = t.team_admin_id
    WHERE p.member_limit = 0
$$;

COMMENT ON FUNCTION verify_credit_integrity() IS
    'One row per broken invariant (balance vs ledger, allocations, negative values, bad refunds, keys, pools over their cap or without a team role); no rows when all hold.';

-- ---- credits_internal.allocate_on_signup(): as revision 0009 defined it ----
CREATE OR REPLACE FUNCTION credits_internal.allocate_on_signup() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sqlstate text;
    v_message  text;
    v_detail   text;
BEGIN
    BEGIN
        WITH planned AS MATERIALIZED (
            SELECT n.id AS user_id,
                   n.role,
                   coalesce(rc.credits, fallback.credits, 0) AS credits,
                   rc.role IS NULL AS is_fallback
            FROM new_users n
            LEFT JOIN public.role_credits rc ON rc.role = n.role
            LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        ),
        allocated AS (
            INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
            SELECT user_id, credits, credits FROM planned
            ON CONFLICT (user_id) DO NOTHING
            RETURNING user_id
        )
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT p.user_id, p.credits, 'credit', 'signup',
               CASE
                   WHEN NOT p.is_fallback THEN 'signup allocation for role ' || p.role
                   WHEN p.role IS NULL THEN 'signup allocation: no role, member allocation (fallback)'
                   ELSE format('signup allocation: unknown role %L, member allocation (fallback)', p.role)
               END
        FROM planned p
        JOIN allocated a USING (user_id)
        -- A zero allocation (a role configured with 0 credits) has nothing to log:
        -- the balance row alone keeps remaining_credits = sum(amount) = 0.
        WHERE p.credits > 0;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        RAISE WARNING 'credits-db: signup allocation failed (%: %); the users were created without credits and the next backfill_user_credits() will allocate them',
            v_sqlstate, v_message;
        BEGIN
            INSERT INTO public.credit_allocation_failures AS f (user_id, sqlstate, message, detail)
            SELECT n.id, v_sqlstate, v_message, nullif(v_detail, '') FROM new_users n
            ON CONFLICT (user_id) DO UPDATE
                SET failed_at = now(), sqlstate = EXCLUDED.sqlstate,
                    message = EXCLUDED.message, detail = EXCLUDED.detail;
        EXCEPTION WHEN OTHERS THEN
            -- Whatever broke the allocation may break this too: the signup still stands.
            RAISE WARNING 'credits-db: the signup allocation failure could not be recorded (%: %)',
                SQLSTATE, SQLERRM;
        END;
    END;
    RETURN NULL;
END
$$;

-- ---- credits_internal.backfill(boolean, integer, boolean, uuid): as revision 0009 defined it ----
CREATE OR REPLACE FUNCTION credits_internal.backfill(
    p_dry_run       boolean,
    p_limit         integer,
    p_keyset        boolean,
    p_after_user_id uuid
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_report jsonb;
BEGIN
    IF p_dry_run IS NULL THEN
        RAISE EXCEPTION 'p_dry_run must be true or false, not NULL' USING ERRCODE = '22004';
    END IF;
    IF (p_limit IS NOT NULL AND p_limit < 1) OR (p_keyset AND p_limit IS NULL) THEN
        RAISE EXCEPTION 'p_limit must be a positive number of users%, not %',
            CASE WHEN p_keyset THEN '' ELSE ' or NULL' END, coalesce(p_limit::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;

    IF NOT p_dry_run THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('credits_db.backfill_user_credits', 0));
    END IF;

    WITH population AS MATERIALIZED (
        -- Counted once: every batch of a p_limit backfill pays this scan of users.
        SELECT count(*) AS users_total FROM public.users
    ),
    user_window AS MATERIALIZED (
        -- Two branches, so that the cursor is an index condition: an OR with
        -- "p_after_user_id IS NULL" would make every batch read the index
        -- from its start.
        (SELECT u.id FROM public.users u
         WHERE p_keyset AND p_after_user_id IS NULL
         ORDER BY u.id
         LIMIT p_limit)
        UNION ALL
        (SELECT u.id FROM public.users u
         WHERE p_keyset AND u.id > p_after_user_id
         ORDER BY u.id
         LIMIT p_limit)
    ),
    chosen AS MATERIALIZED (
        (SELECT c.user_id, c.role, c.credits, c.is_fallback
         FROM public.credits_backfill_candidates c
         WHERE NOT p_keyset
         LIMIT p_limit)
        UNION ALL
        -- LIMIT 1 keeps each lookup a probe by primary key, one per user of the
        -- window, whatever the statistics of user_credits say.
        SELECT c.user_id, c.role, c.credits, c.is_fallback
        FROM user_window w
        CROSS JOIN LATERAL (
            SELECT * FROM public.credits_backfill_candidates c WHERE c.user_id = w.id LIMIT 1
        ) c
    ),
    locked AS MATERIALIZED (
        SELECT u.id FROM public.users u
        WHERE NOT p_dry_run AND u.id IN (SELECT c.user_id FROM chosen c)
        FOR KEY SHARE OF u
    ),
    allocated AS (
        INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
        SELECT c.user_id, c.credits, c.credits FROM chosen c JOIN locked l ON l.id = c.user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id
    ),
    cleared AS (
        DELETE FROM public.credit_allocation_failures f
        USING allocated a WHERE f.user_id = a.user_id
    ),
    -- One join tells which chosen users this call allocated; the log rows and
    -- every number of the report come from it, so nothing is scanned twice.
    done AS MATERIALIZED (
        SELECT c.* FROM chosen c WHERE p_dry_run
        UNION ALL
        SELECT c.* FROM chosen c JOIN allocated a USING (user_id)
    ),
    logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT d.user_id, d.credits, 'credit', 'backfill',
               CASE
                   WHEN NOT d.is_fallback THEN 'backfill allocation for role ' || d.role
                   WHEN d.role IS NULL THEN 'backfill allocation: no role, member allocation (fallback)'
                   ELSE format('backfill allocation: unknown role %L, member allocation (fallback)', d.role)
               END
        FROM done d
        WHERE NOT p_dry_run AND d.credits > 0
    ),
    per_role AS (
        SELECT role, count(*) AS users, sum(credits) AS credits,
               count(*) FILTER (WHERE is_fallback) AS fallback_users
        FROM done
        GROUP BY role
    )
    SELECT jsonb_build_object(
        'users_backfilled', coalesce(sum(users), 0),
        'credits_allocated', coalesce(sum(credits), 0),
        'fallback_role_users', coalesce(sum(fallback_users), 0),
        'by_role', coalesce(jsonb_object_agg(coalesce(role, '(null)'),
                            jsonb_build_object('users', users, 'credits', credits)), '{}'),
        'users_skipped', CASE WHEN p_dry_run THEN 0
                              ELSE (SELECT count(*) FROM chosen) - (SELECT count(*) FROM locked)
                         END,
        'dry_run', p_dry_run
    ) || CASE
        WHEN p_keyset THEN jsonb_build_object(
            'users_scanned', (SELECT count(*) FROM user_window),
            'last_user_id', (SELECT id FROM user_window ORDER BY id DESC LIMIT 1))
        ELSE jsonb_build_object(
            'users_total', (SELECT users_total FROM population),
            -- Without a limit every candidate is chosen. With one, count instead
            -- of re-running the anti-join: every balance row belongs to exactly
            -- one existing user (primary key, foreign key), so the difference is exact.
            'users_without_credits', CASE WHEN p_limit IS NULL
                                          THEN (SELECT count(*) FROM chosen)
                                          ELSE (SELECT users_total FROM population)
                                               - (SELECT count(*) FROM public.user_credits)
                                     END)
    END
    INTO v_report
    FROM per_role;
    RETURN v_report;
END
$$;

COMMENT ON FUNCTION credits_internal.backfill(boolean, integer, boolean, uuid) IS
    'Internal: the allocation behind backfill_user_credits() and backfill_user_credits_batch().';

-- ---- grant_credits(uuid, integer, text, text, text): as revision 0009 defined it ----
CREATE OR REPLACE FUNCTION grant_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'admin_grant',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_log_id    bigint;
    v_remaining integer;
    v_total     integer;
    v_earlier   bigint;
    v_earlier_remaining integer;
    v_key_taken boolean;
    v_entry     public.credit_usage_log;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a grant must be a positive integer',
            coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
    ELSIF p_source IS NULL OR p_source = '' THEN
        RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
    ELSIF p_source IN ('signup', 'backfill', 'role_change', 'refund') THEN
        RAISE EXCEPTION 'p_source % is reserved', quote_literal(p_source)
            USING ERRCODE = '22023',
                  HINT = 'signup, backfill and role_change are role allocations, refund is refund_credits().';
    ELSIF p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        -- A longer key might not fit the key's index (54000): refuse it by name.
        RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
            USING ERRCODE = '22023';
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.grant:' || p_user_id::text || ':' || p_idempotency_key, 0::bigint));

        SELECT k.log_id, k.remaining_credits INTO v_earlier, v_earlier_remaining
        FROM public.credit_idempotency_keys k
        WHERE k.owner_user_id = p_user_id AND k.operation = 'grant'
          AND k.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            SELECT * INTO v_entry FROM public.credit_usage_log l WHERE l.id = v_earlier;
            IF v_entry.amount <> p_amount OR v_entry.source <> p_source THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s; this call: credit of %s, source %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, p_amount, p_source);
            END IF;
            RETURN credits_internal.replayed_result(v_entry, v_earlier_remaining);
        END IF;
    END IF;

    -- Checked up front because the upsert would report it as a foreign-key
    -- violation (23503), which callers cannot tell from other failures.
    PERFORM 1 FROM public.users u WHERE u.id = p_user_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    WITH opened AS (
        INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
        SELECT c.user_id, c.credits, c.credits FROM public.credits_backfill_candidates c
        WHERE c.user_id = p_user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id, total_credits
    ),
    cleared AS (
        DELETE FROM public.credit_allocation_failures f
        USING opened o WHERE f.user_id = o.user_id
    )
    INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
    SELECT o.user_id, o.total_credits, 'credit', 'backfill',
           'backfill allocation (account opened by a grant)'
    FROM opened o
    WHERE o.total_credits > 0;

    INSERT INTO public.user_credits AS uc (user_id, total_credits)
    VALUES (p_user_id, p_amount)
    ON CONFLICT (user_id) DO UPDATE
        SET total_credits = uc.total_credits + EXCLUDED.total_credits, last_updated = now()
        WHERE uc.total_credits <= 2147483647 - EXCLUDED.total_credits
    RETURNING uc.remaining_credits INTO v_remaining;

    IF NOT FOUND THEN
        -- The upsert locked the row even though its WHERE refused it.
        SELECT uc.total_credits INTO v_total FROM public.user_credits uc WHERE uc.user_id = p_user_id;
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', p_amount
            USING ERRCODE = 'CR006',
                  DETAIL = format('total_credits is %s; at most %s more can be granted',
                                  v_total, 2147483647 - v_total);
    END IF;

    WITH logged AS (
        INSERT INTO public.credit_usage_log
            (user_id, amount, type, source, description, idempotency_key)
        VALUES (p_user_id, p_amount, 'credit', p_source, p_description, p_idempotency_key)
        RETURNING id
    ), keyed AS (
        INSERT INTO public.credit_idempotency_keys
            (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
        SELECT p_user_id, 'grant', p_idempotency_key, logged.id, v_remaining FROM logged
        WHERE p_idempotency_key IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING log_id
    )
    SELECT logged.id, p_idempotency_key IS NOT NULL AND NOT EXISTS (SELECT FROM keyed)
    INTO v_log_id, v_key_taken
    FROM logged;
    IF v_key_taken THEN
        -- Taken since the replay check, which the lock above rules out.
        RAISE EXCEPTION 'idempotency key % was taken by a concurrent call', p_idempotency_key
            USING ERRCODE = '40001', HINT = 'Retry the call: it will replay.';
    END IF;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
        'amount', p_amount, 'remaining_credits', v_remaining,
        'from_team_pool', false, 'replayed', false);
END
$$;

REVOKE EXECUTE ON FUNCTION grant_credits(uuid, integer, text, text, text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION grant_credits(uuid, integer, text, text, text)
    TO credits_admin;

-- The privileges 0003 and 0007 gave it inside DO blocks: taken back from
-- Supabase's API roles, and on PostgreSQL 15 given to a NOINHERIT service_role.
DO $credits_grant_privileges$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('anon', 'authenticated', 'service_role')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION public.grant_credits(uuid, integer, text, text, text)'
                       ' FROM %I', v_role);
    END LOOP;
    IF current_setting('server_version_num')::integer < 160000
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role' AND NOT rolinherit)
       AND pg_catalog.pg_has_role('service_role', 'credits_admin', 'MEMBER') THEN
        GRANT EXECUTE ON FUNCTION public.grant_credits(uuid, integer, text, text, text)
            TO service_role;
    END IF;
END
$credits_grant_privileges$;

COMMENT ON FUNCTION grant_credits(uuid, integer, text, text, text) IS
    'Add p_amount to the account''s total_credits (creating its balance row if missing). CR006 if the total would exceed 2^31-1; keyed calls replay.';

-- ---- credits_internal.topup_on_role_change(): as revision 0009 defined it ----
CREATE OR REPLACE FUNCTION credits_internal.topup_on_role_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_credits   integer;
    v_allocated integer;
    v_total     integer;
    v_topup     integer;
    v_opened    uuid;
BEGIN
    SELECT coalesce(rc.credits, fallback.credits, 0) INTO v_credits
    FROM (SELECT) AS one
    LEFT JOIN public.role_credits rc ON rc.role = NEW.role
    LEFT JOIN public.role_credits fallback ON fallback.role = 'member';

    -- allocated_credits only ever grows: if what is visible covers the new
    -- role already, the locked row does too, and nothing needs a lock.
    SELECT uc.allocated_credits INTO v_allocated
    FROM public.user_credits uc WHERE uc.user_id = NEW.id;
    IF FOUND AND v_allocated >= v_credits THEN
        RETURN NULL;
    END IF;

    FOR attempt IN 1..2 LOOP
        SELECT uc.allocated_credits, uc.total_credits INTO v_allocated, v_total
        FROM public.user_credits uc WHERE uc.user_id = NEW.id
        FOR NO KEY UPDATE;
        EXIT WHEN FOUND;

        INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
        VALUES (NEW.id, v_credits, v_credits)
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id INTO v_opened;
        IF v_opened IS NOT NULL THEN
            DELETE FROM public.credit_allocation_failures f WHERE f.user_id = NEW.id;
            IF v_credits > 0 THEN
                INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
                VALUES (NEW.id, v_credits, 'credit', 'backfill',
                        format('backfill allocation for role %s (account opened by a role change)',
                               coalesce(quote_literal(NEW.role), 'NULL')));
            END IF;
            RETURN NULL;
        END IF;
        -- Opened meanwhile by a backfill or grant that has now committed: the
        -- next round locks that row and tops it up.
    END LOOP;
    IF v_total IS NULL THEN
        RETURN NULL;
    END IF;

    v_topup := least(greatest(v_credits - v_allocated, 0), 2147483647 - v_total);
    IF v_topup < v_credits - v_allocated THEN
        RAISE WARNING 'credits-db: role change top-up for user % capped at % of % (total_credits limit 2147483647)',
            NEW.id, v_topup, v_credits - v_allocated;
    END IF;
    IF v_topup <= 0 THEN
        RETURN NULL;
    END IF;

    UPDATE public.user_credits
    SET total_credits = total_credits + v_topup,
        allocated_credits = allocated_credits + v_topup,
        last_updated = now()
    WHERE user_id = NEW.id;

    INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
    VALUES (NEW.id, v_topup, 'credit', 'role_change',
            CASE WHEN v_topup = v_credits - v_allocated
                 THEN format('role changed to %s: allocation raised by %s',
                             coalesce(quote_literal(NEW.role), 'NULL'), v_topup)
                 ELSE format('role changed to %s: allocation raised by %s, capped at %s (total_credits limit)',
                             coalesce(quote_literal(NEW.role), 'NULL'), v_credits - v_allocated, v_topup)
            END);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION credits_internal.topup_on_role_change() IS
    'Trigger: raise the account to the new role''s allocation when that exceeds the largest it was given (allocated_credits); open it if missing. Never lowers it.';

-- ---- new in 0010: dropped ----
DROP FUNCTION get_credit_lots(uuid);
DROP FUNCTION expire_credits(timestamp with time zone, integer);
DROP FUNCTION credits_internal.lot_summary(uuid);
DROP FUNCTION credits_internal.take_from_lots(uuid, uuid, integer, text, text, text);
DROP FUNCTION grant_credits(uuid, integer, text, text, text, timestamp with time zone, integer);

-- ---- DDL before the functions of the upgrade, undone ----
DROP TABLE credit_lot_takes;
DROP TABLE credit_lots;

-- squawk-ignore ban-drop-column
ALTER TABLE credit_usage_log DROP COLUMN lot_id;
-- squawk-ignore ban-drop-column
ALTER TABLE user_credits DROP COLUMN tracked_credits;

ALTER TABLE credit_usage_log
    DROP CONSTRAINT credit_usage_log_type_check,
    DROP CONSTRAINT credit_usage_log_amount_sign;
ALTER TABLE credit_usage_log
    ADD CONSTRAINT credit_usage_log_type_check CHECK (type IN ('credit', 'debit')),
    ADD CONSTRAINT credit_usage_log_amount_sign CHECK (
        (type = 'credit' AND amount > 0) OR (type = 'debit' AND amount < 0)
    );

COMMENT ON TABLE credit_usage_log IS
    'Append-only ledger of credits (amount > 0) and debits (amount < 0) per account.';
