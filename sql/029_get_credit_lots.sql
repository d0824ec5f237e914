-- One account's lots in spending order, each with what is left of it and its
-- state: 'open' (spendable), 'lapsed' (past its expiry, not swept yet: not
-- spendable), 'expired' (swept: its unspent part expired) or 'spent'. An
-- untracked lot's remainder is derived (026): the account's untracked credits
-- fill the newest untracked lots, as oldest-first spending leaves them.
--
-- Permission: as get_credit_balance, a caller outside credits_admin may read
-- only their own lots, credits_current_user_id(), else 42501. A NULL or
-- unknown user is CR005; a user without a balance row has no lots ([]).
CREATE FUNCTION get_credit_lots(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lots jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not read the lots of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  HINT = 'A credits_user may read only its own lots (credits_current_user_id()).';
    END IF;
    PERFORM 1 FROM public.users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', coalesce(p_user_id::text, 'NULL') USING ERRCODE = 'CR005';
    END IF;

    WITH account AS (
        SELECT uc.user_id, uc.remaining_credits - uc.tracked_credits AS untracked
        FROM public.user_credits uc WHERE uc.user_id = p_user_id
    ), untracked AS (
        SELECT l.id,
               sum(l.amount) OVER (ORDER BY l.id DESC ROWS UNBOUNDED PRECEDING) - l.amount
                   AS newer
        FROM public.credit_lots l JOIN account a ON a.user_id = l.user_id
        WHERE NOT l.tracked
    ), lots AS (
        SELECT l.*,
               CASE WHEN l.tracked THEN l.amount - l.taken - l.expired
                    ELSE least(l.amount, greatest(a.untracked - u.newer, 0))::integer
               END AS remaining
        FROM public.credit_lots l
        JOIN account a ON a.user_id = l.user_id
        LEFT JOIN untracked u ON u.id = l.id
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'lot_id', l.id, 'source', l.source, 'log_id', l.log_id,
               'amount', l.amount, 'remaining', l.remaining,
               'taken', CASE WHEN l.tracked THEN l.taken ELSE l.amount - l.remaining END,
               'expired', l.expired, 'expires_at', l.expires_at, 'priority', l.priority,
               'created_at', l.created_at,
               'state', CASE WHEN l.remaining = 0 AND l.expired > 0 THEN 'expired'
                             WHEN l.remaining = 0 THEN 'spent'
                             WHEN l.expires_at <= statement_timestamp() THEN 'lapsed'
                             ELSE 'open' END)
               ORDER BY l.priority, l.expires_at NULLS LAST, l.id), '[]')
    INTO v_lots
    FROM lots l;
    RETURN v_lots;
END
$$;

REVOKE EXECUTE ON FUNCTION get_credit_lots(uuid) FROM PUBLIC;

COMMENT ON FUNCTION get_credit_lots(uuid) IS
    'The lots of one account in spending order: amount, remaining, taken, expired, expiry, priority, state (open, lapsed, expired, spent). Only credits_admin members may read another user''s (else 42501).';
