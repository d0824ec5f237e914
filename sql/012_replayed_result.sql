-- credits_internal holds the helpers the PL/pgSQL functions call by name.
-- PL/pgSQL resolves names when a statement first runs, and a function in a
-- schema others may CREATE in can be made ambiguous by an overload with an
-- extra defaulted parameter (foo(int) beside foo(int, int DEFAULT 0) is
-- "not unique"): no role but the owner may create anything in this schema,
-- so a call here always reaches ours.
CREATE SCHEMA credits_internal;
REVOKE ALL ON SCHEMA credits_internal FROM PUBLIC;

COMMENT ON SCHEMA credits_internal IS
    'credits-db''s internal helpers: only its owner may create objects here.';

-- A replayed call answers exactly what the original call answered, without
-- storing answers: remaining_credits after an entry is the running sum of the
-- account's entries up to that entry. The sum is exact because every writer
-- appends to an account's log only while it holds the lock on that account's
-- user_credits row, so within one account ids follow commit order; the
-- account's entries start after its opened_after_log_id (004). It reads the
-- account's history, a cost only a replay (a retry) pays.
CREATE FUNCTION credits_internal.replayed_result(p_entry public.credit_usage_log) RETURNS jsonb
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
        'remaining_credits', (SELECT sum(l.amount) FROM public.credit_usage_log l
                              WHERE l.user_id = p_entry.user_id AND l.id <= p_entry.id
                                AND l.id > coalesce((SELECT uc.opened_after_log_id
                                                     FROM public.user_credits uc
                                                     WHERE uc.user_id = p_entry.user_id), 0)),
        'from_team_pool', p_entry.actor_user_id IS NOT NULL,
        'replayed', true
    );
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.replayed_result(public.credit_usage_log) FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.replayed_result(public.credit_usage_log) IS
    'Internal: the result a keyed debit or grant returned originally, rebuilt from its log entry (replayed = true).';
