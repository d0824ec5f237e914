-- What a user can spend right now. One statement, so own balance, pool
-- membership and pool balance come from one snapshot and agree with each
-- other. spendable is the largest amount a single debit_credits call would
-- accept: debits are never split, so it is the larger of the two balances,
-- not their sum. Lots (026): what lapsed without a sweep yet is not
-- spendable (own.spendable_credits, team_pool_spendable), and next_expiry
-- says when the soonest open lot expires and how much it still holds;
-- next_renewal (own and pool) when the current allowance period ends and what
-- the role then gives, for a role that renews (030). A NULL id is an unknown
-- user (CR005).
--
-- Permission: as debit_credits, a caller outside credits_admin
-- may read only their own balance, credits_current_user_id(), else 42501.
CREATE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
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
                         || own_lots.summary
                         || jsonb_build_object('next_renewal', CASE
                                WHEN own_role.renewal_interval IS NOT NULL
                                     AND own.period_ends_at IS NOT NULL
                                THEN jsonb_build_object('renews_at', own.period_ends_at,
                                                        'credits', own_role.credits,
                                                        'rollover_cap', own_role.rollover_cap)
                                END)
               END,
        'team_admin_id', t.team_admin_id,
        'team_pool_remaining', pool.remaining_credits,
        'team_pool_spendable', (pool_lots.summary->>'spendable_credits')::integer,
        'team_pool_next_expiry', pool_lots.summary->'next_expiry',
        'team_pool_next_renewal', CASE
            WHEN pool_role.renewal_interval IS NOT NULL AND pool.period_ends_at IS NOT NULL
            THEN jsonb_build_object('renews_at', pool.period_ends_at,
                                    'credits', pool_role.credits,
                                    'rollover_cap', pool_role.rollover_cap)
            END,
        'spendable', coalesce(greatest((own_lots.summary->>'spendable_credits')::integer,
                                       (pool_lots.summary->>'spendable_credits')::integer), 0)
    )
    INTO v_result
    FROM public.users u
    LEFT JOIN public.user_credits own ON own.user_id = u.id
    LEFT JOIN public.team_credit_sharing t ON t.team_member_id = u.id
    LEFT JOIN public.user_credits pool ON pool.user_id = t.team_admin_id
    LEFT JOIN LATERAL (SELECT credits_internal.lot_summary(own.user_id) AS summary) own_lots
           ON own.user_id IS NOT NULL
    LEFT JOIN LATERAL (SELECT credits_internal.lot_summary(pool.user_id) AS summary) pool_lots
           ON pool.user_id IS NOT NULL
    -- The role that renews an account: its user's, the member row for a NULL
    -- or unknown one; the pool's is its admin's (031).
    LEFT JOIN LATERAL (
        SELECT r.credits, r.renewal_interval, r.rollover_cap
        FROM public.role_credits r
        WHERE r.role = coalesce((SELECT rc.role FROM public.role_credits rc WHERE rc.role = u.role),
                                'member')
    ) own_role ON own.user_id IS NOT NULL
    LEFT JOIN public.users admin ON admin.id = t.team_admin_id
    LEFT JOIN LATERAL (
        SELECT r.credits, r.renewal_interval, r.rollover_cap
        FROM public.role_credits r
        WHERE r.role = coalesce((SELECT rc.role FROM public.role_credits rc
                                 WHERE rc.role = admin.role), 'member')
    ) pool_role ON pool.user_id IS NOT NULL
    WHERE u.id = p_user_id;

    IF v_result IS NULL THEN
        RAISE EXCEPTION 'unknown user %', coalesce(p_user_id::text, 'NULL') USING ERRCODE = 'CR005';
    END IF;
    RETURN v_result;
END
$$;

REVOKE EXECUTE ON FUNCTION get_credit_balance(uuid) FROM PUBLIC;

COMMENT ON FUNCTION get_credit_balance(uuid) IS
    'Own balance, team pool, spendable (the largest single debit accepted now), the next expiry and the next renewal of one user; CR005 if unknown. Only credits_admin members may read another user''s balance (else 42501).';
