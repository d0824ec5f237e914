-- Adds credits to one account's total. A user without a balance row (one the
-- backfill has not reached yet) first gets their role allocation, exactly as
-- the backfill would give it, and then the grant: opening the account here
-- must not cost them the allocation the backfill would no longer make.
-- Both writes are upserts, so a concurrent grant, signup or backfill cannot
-- make this fail or allocate twice.
--
-- total_credits is an integer; a grant that would push it past 2^31-1 is
-- refused with CR006 by the upsert's own WHERE, on the locked row, rather than
-- by an integer-overflow error (or, worse, a wrap) from the addition.
--
-- Idempotency: a grant's key is the granted account's, in the grants'
-- namespace (credit_idempotency_keys, 026): the user's own debit keys cannot
-- take or block it. Racing grants with one key queue on an advisory lock on
-- (account, key), then replay the winner's entry (at REPEATABLE READ and
-- SERIALIZABLE: 40001, see debit_credits); the key with a different amount or
-- source is CR007.
--
-- The sources 'signup', 'backfill', 'role_change', 'renewal', 'rollover',
-- 'refund', 'expiry' and 'opening_balance' are reserved: the first five are
-- role allocations (the first three sum to allocated_credits; the renewal
-- finds an allowance's lots by them), refund names a refund, expiry an
-- expiration, opening_balance the lot revision 0010 opened each account with.
-- A grant under one of them is 22023.
--
-- The user's row is locked FOR KEY SHARE before anything is written (the lock
-- the balance row's foreign key check takes): a user deleted while the grant
-- waits is an unknown user (CR005), never a foreign key violation (23503).
--
-- The credits are one lot (026): expiring at p_expires_at (NULL: never) and
-- spent by p_priority (NULL: the default 50; a lower number first). A key
-- replays only with the same expiry and priority too (else CR007).
--
-- Argument errors, checked in this order: NULL user CR005, NULL or
-- non-positive amount CR006, NULL, empty or reserved source 22023, empty or
-- over-255-character key 22023, priority outside 0..100 22023, then the key's
-- replay, then an expiry not in the future 22023, then unknown user CR005,
-- then overflow CR006.
CREATE FUNCTION grant_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'admin_grant',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_expires_at      timestamptz DEFAULT NULL,
    p_priority        integer DEFAULT NULL
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
    v_lot_expires_at timestamptz;
    v_lot_priority   integer;
    v_priority  integer := coalesce(p_priority, 50);
    v_tracked   boolean := p_expires_at IS NOT NULL OR coalesce(p_priority, 50) <> 50;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a grant must be a positive integer',
            coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
    ELSIF p_source IS NULL OR p_source = '' THEN
        RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
    ELSIF p_source IN ('signup', 'backfill', 'role_change', 'renewal', 'rollover', 'refund',
                       'expiry', 'opening_balance') THEN
        RAISE EXCEPTION 'p_source % is reserved', quote_literal(p_source)
            USING ERRCODE = '22023',
                  HINT = 'signup, backfill, role_change, renewal and rollover are role allocations, refund is refund_credits(), expiry expire_credits(), opening_balance the lots of revision 0010.';
    ELSIF p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        -- A longer key might not fit the key's index (54000): refuse it by name.
        RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
            USING ERRCODE = '22023';
    ELSIF p_priority NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'p_priority must be NULL (50) or 0 to 100, not %', p_priority
            USING ERRCODE = '22023', HINT = 'Lots with a lower number are spent first.';
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
            -- A grant made before lots existed has none: it had no expiry.
            SELECT l.expires_at, l.priority INTO v_lot_expires_at, v_lot_priority
            FROM public.credit_lots l
            WHERE l.user_id = p_user_id AND l.log_id = v_earlier;
            IF v_entry.amount <> p_amount OR v_entry.source <> p_source
               OR v_lot_expires_at IS DISTINCT FROM p_expires_at
               OR coalesce(v_lot_priority, 50) <> v_priority THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s, expires %s, priority %s; this call: credit of %s, source %s, expires %s, priority %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, coalesce(v_lot_expires_at::text, 'never'),
                                          coalesce(v_lot_priority, 50), p_amount, p_source,
                                          coalesce(p_expires_at::text, 'never'), v_priority);
            END IF;
            RETURN credits_internal.replayed_result(v_entry, v_earlier_remaining);
        END IF;
    END IF;

    -- After the replay, so that a retry of a grant whose expiry has passed
    -- since still replays.
    IF p_expires_at <= statement_timestamp() OR p_expires_at = 'infinity' THEN
        RAISE EXCEPTION 'p_expires_at % is not a time in the future', p_expires_at
            USING ERRCODE = '22023',
                  HINT = 'Expired credits could never be spent; NULL never expires.';
    END IF;

    -- Checked up front because the upsert would report it as a foreign-key
    -- violation (23503), which callers cannot tell from other failures.
    PERFORM 1 FROM public.users u WHERE u.id = p_user_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    -- Opening the account: ordered with a role that starts renewing
    -- meanwhile (032, 030). An open account needs no role.
    IF NOT EXISTS (SELECT 1 FROM public.user_credits uc WHERE uc.user_id = p_user_id) THEN
        PERFORM credits_internal.lock_allocation_roles(
            ARRAY(SELECT u.role FROM public.users u WHERE u.id = p_user_id));
    END IF;

    WITH opened AS (
        INSERT INTO public.user_credits
            (user_id, total_credits, allocated_credits, tracked_credits, period_ends_at,
             period_allowance)
        SELECT c.user_id, c.credits, c.credits,
               CASE WHEN n.ends_at IS NOT NULL THEN c.credits ELSE 0 END,
               n.ends_at, CASE WHEN n.ends_at IS NOT NULL THEN c.credits END
        FROM public.credits_backfill_candidates c
        LEFT JOIN public.role_credits rc ON rc.role = c.role
        JOIN public.role_credits r ON r.role = coalesce(rc.role, 'member')
        -- A renewing role's allowance expires with the first period (030).
        CROSS JOIN LATERAL (SELECT (now() AT TIME ZONE 'UTC' + r.renewal_interval)
                                   AT TIME ZONE 'UTC' AS ends_at) n
        WHERE c.user_id = p_user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id, total_credits, period_ends_at
    ),
    cleared AS (
        DELETE FROM public.credit_allocation_failures f
        USING opened o WHERE f.user_id = o.user_id
    ),
    allocated AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT o.user_id, o.total_credits, 'credit', 'backfill',
               'backfill allocation (account opened by a grant)'
        FROM opened o
        WHERE o.total_credits > 0
        RETURNING id, user_id, amount, source
    )
    INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
    SELECT a.user_id, a.id, a.source, a.amount, o.period_ends_at
    FROM allocated a JOIN opened o USING (user_id);

    INSERT INTO public.user_credits AS uc (user_id, total_credits, tracked_credits)
    VALUES (p_user_id, p_amount, CASE WHEN v_tracked THEN p_amount ELSE 0 END)
    ON CONFLICT (user_id) DO UPDATE
        SET total_credits = uc.total_credits + EXCLUDED.total_credits,
            tracked_credits = uc.tracked_credits + EXCLUDED.tracked_credits,
            last_updated = now()
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
    ), lot AS (
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at, priority)
        SELECT p_user_id, logged.id, p_source, p_amount, p_expires_at, v_priority FROM logged
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

REVOKE EXECUTE ON FUNCTION grant_credits(uuid, integer, text, text, text, timestamptz, integer)
    FROM PUBLIC;

COMMENT ON FUNCTION grant_credits(uuid, integer, text, text, text, timestamptz, integer) IS
    'Add p_amount to the account''s total_credits as a lot, expiring at p_expires_at (NULL: never), spent by p_priority (NULL: 50; lower first). CR006 if the total would exceed 2^31-1; keyed calls replay.';
