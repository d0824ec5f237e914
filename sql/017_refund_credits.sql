-- Reverses one debit onto the account it came from (the team admin's for a
-- pool debit). The log is append-only, so the refund is a new 'credit' row,
-- source 'refund', whose refund_of names the debit; like every credit it
-- raises total_credits, which keeps the ledger identities plain:
-- total_credits = sum of credits, used_credits = -(sum of debits).
--
-- At most once: concurrent refunds of one debit queue on the account's
-- user_credits row lock, taken before the "already refunded?" look-up, so the
-- second sees the first's committed row and answers CR008; the UNIQUE
-- constraint on refund_of backs this up whatever the path.
--
-- A NULL, unknown or non-debit log id is CR008 (nothing refundable there). A
-- debit whose account no longer exists is CR005: the user was deleted, or
-- deleted and re-created with the same id, whose new account (004) never
-- receives a refund of the old one's debits.
--
-- Lots (026): the refund gives back to the lots the debit took from, as its
-- takes record; onto a lot past its expiry the credits expire at once, with
-- an 'expire' entry after the refund's.
CREATE FUNCTION refund_credits(p_log_id bigint, p_description text DEFAULT NULL) RETURNS jsonb
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
    -- wrapped) if the total would pass the integer range. What the debit took
    -- from tracked lots goes back to them (the rest is untracked credit): to
    -- an open lot as spendable credit again, to a lot past its expiry as
    -- credit that expires at once (a refund never revives expired credit).
    WITH shares AS MATERIALIZED (
        SELECT t.lot_id, t.amount, l.expires_at <= statement_timestamp() AS lapsed
        FROM public.credit_lot_takes t
        JOIN public.credit_lots l ON l.id = t.lot_id AND l.user_id = v_debit.user_id
        WHERE t.log_id = p_log_id
    ), returned AS (
        UPDATE public.credit_lots l
        SET taken = l.taken - s.amount,
            expired = l.expired + CASE WHEN s.lapsed THEN s.amount ELSE 0 END
        FROM shares s WHERE l.id = s.lot_id
    ), totals AS (
        SELECT coalesce(sum(s.amount) FILTER (WHERE s.lapsed IS NOT TRUE), 0)::integer AS back,
               coalesce(sum(s.amount) FILTER (WHERE s.lapsed), 0)::integer AS lapsed
        FROM shares s
    )
    UPDATE public.user_credits uc
    SET total_credits = uc.total_credits - v_debit.amount,
        used_credits = uc.used_credits + t.lapsed,
        tracked_credits = uc.tracked_credits + t.back,
        last_updated = now()
    FROM totals t
    WHERE uc.user_id = v_debit.user_id AND uc.total_credits <= 2147483647 + v_debit.amount
    RETURNING uc.remaining_credits INTO v_remaining;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', -v_debit.amount
            USING ERRCODE = 'CR006';
    END IF;

    INSERT INTO public.credit_usage_log
        (user_id, actor_user_id, amount, type, source, description, refund_of)
    VALUES (v_debit.user_id, v_debit.actor_user_id, -v_debit.amount, 'credit', 'refund',
            coalesce(p_description, format('refund of entry %s', p_log_id)), p_log_id)
    RETURNING id INTO v_log_id;

    -- After the refund entry, so that the history reads in order.
    INSERT INTO public.credit_usage_log (user_id, actor_user_id, amount, type, source, description, lot_id)
    SELECT v_debit.user_id, v_debit.actor_user_id, -t.amount, 'expire', 'expiry',
           format('refund of entry %s onto lot %s, which expired at %s', p_log_id, l.id, l.expires_at),
           l.id
    FROM public.credit_lot_takes t
    JOIN public.credit_lots l ON l.id = t.lot_id AND l.user_id = v_debit.user_id
    WHERE t.log_id = p_log_id AND l.expires_at <= statement_timestamp()
    ORDER BY l.id;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', v_debit.user_id,
        'actor_user_id', v_debit.actor_user_id, 'amount', -v_debit.amount,
        'remaining_credits', v_remaining,
        'from_team_pool', v_debit.actor_user_id IS NOT NULL, 'replayed', false);
END
$$;

REVOKE EXECUTE ON FUNCTION refund_credits(bigint, text) FROM PUBLIC;

COMMENT ON FUNCTION refund_credits(bigint, text) IS
    'Reverse one debit onto its account (a refund credit: total_credits increases). CR008 if not a debit or already refunded.';
