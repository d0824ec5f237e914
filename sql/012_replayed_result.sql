-- A replayed call answers exactly what the original call answered. The key
-- row stores the remaining_credits it answered (the account it was written to
-- may have ended since, a pool admin deleted and re-created: nothing else
-- records where that account began). Keys written before revision 0007 have
-- none stored: for those it is rebuilt as the running sum of the account's
-- entries up to the entry, exact because every writer appends to an account's
-- log only while it holds the lock on that account's user_credits row, so
-- within one account ids follow commit order.
CREATE FUNCTION credits_internal.replayed_result(
    p_entry     public.credit_usage_log,
    p_remaining integer
) RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'log_id', p_entry.id,
        'account_user_id', p_entry.user_id,
        'actor_user_id', p_entry.actor_user_id,
        'amount', abs(p_entry.amount),
        'remaining_credits', coalesce(p_remaining, (
            SELECT sum(l.amount) FROM public.credit_usage_log l
            WHERE l.user_id = p_entry.user_id AND l.id <= p_entry.id
              AND l.id > coalesce((SELECT uc.opened_after_log_id FROM public.user_credits uc
                                   WHERE uc.user_id = p_entry.user_id
                                     AND uc.opened_after_log_id < p_entry.id), 0))),
        'from_team_pool', p_entry.actor_user_id IS NOT NULL,
        'replayed', true
    );
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.replayed_result(public.credit_usage_log, integer) FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.replayed_result(public.credit_usage_log, integer) IS
    'Internal: the result a keyed debit or grant returned originally, from its log entry and the remaining_credits its key stored (replayed = true).';
