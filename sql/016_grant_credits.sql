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
-- Idempotency: the key is scoped to the account (the grant's own user_id).
-- Racing grants with one key queue on the same advisory lock as debits of that
-- user with that key, then replay the winner's entry; an entry with the key and
-- different type, amount or source is CR007.
--
-- Argument errors, checked in this order: NULL user CR005, NULL or
-- non-positive amount CR006, NULL or empty source 22023, empty or over-255-character key 22023,
-- then the key's replay, then unknown user CR005, then overflow CR006.
CREATE FUNCTION grant_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'admin_grant',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_log_id    bigint;
    v_remaining integer;
    v_total     integer;
    v_entry     credit_usage_log;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a grant must be a positive integer',
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

        SELECT l.* INTO v_entry
        FROM credit_usage_log l
        WHERE l.user_id = p_user_id AND l.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_entry.type <> 'credit' OR v_entry.amount <> p_amount
               OR v_entry.source <> p_source THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s; this call: credit of %s, source %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, p_amount, p_source);
            END IF;
            RETURN credits_replayed_result(v_entry);
        END IF;
    END IF;

    -- Checked up front because the upsert would report it as a foreign-key
    -- violation (23503), which callers cannot tell from other failures.
    PERFORM 1 FROM users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    WITH opened AS (
        INSERT INTO user_credits (user_id, total_credits)
        SELECT c.user_id, c.credits FROM credits_backfill_candidates c
        WHERE c.user_id = p_user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id, total_credits
    )
    INSERT INTO credit_usage_log (user_id, amount, type, source, description)
    SELECT o.user_id, o.total_credits, 'credit', 'backfill',
           'backfill allocation (account opened by a grant)'
    FROM opened o
    WHERE o.total_credits > 0;

    INSERT INTO user_credits AS uc (user_id, total_credits)
    VALUES (p_user_id, p_amount)
    ON CONFLICT (user_id) DO UPDATE
        SET total_credits = uc.total_credits + EXCLUDED.total_credits, last_updated = now()
        WHERE uc.total_credits <= 2147483647 - EXCLUDED.total_credits
    RETURNING uc.remaining_credits INTO v_remaining;

    IF NOT FOUND THEN
        -- The upsert locked the row even though its WHERE refused it.
        SELECT uc.total_credits INTO v_total FROM user_credits uc WHERE uc.user_id = p_user_id;
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', p_amount
            USING ERRCODE = 'CR006',
                  DETAIL = format('total_credits is %s; at most %s more can be granted',
                                  v_total, 2147483647 - v_total);
    END IF;

    INSERT INTO credit_usage_log (user_id, amount, type, source, description, idempotency_key)
    VALUES (p_user_id, p_amount, 'credit', p_source, p_description, p_idempotency_key)
    ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_log_id;
    IF v_log_id IS NULL THEN
        -- Taken since the replay check by a caller holding a different lock: a
        -- team member's keyed debit of this (admin's) account.
        RAISE EXCEPTION 'idempotency key % was already used on this account by another call',
            p_idempotency_key
            USING ERRCODE = 'CR007', DETAIL = format('account %s', p_user_id);
    END IF;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
        'amount', p_amount, 'remaining_credits', v_remaining,
        'from_team_pool', false, 'replayed', false);
END
$$;

REVOKE EXECUTE ON FUNCTION grant_credits(uuid, integer, text, text, text) FROM PUBLIC;

COMMENT ON FUNCTION grant_credits(uuid, integer, text, text, text) IS
    'Add p_amount to the account''s total_credits (creating its balance row if missing). CR006 if the total would exceed 2^31-1; keyed calls replay.';
