-- The verification report an operator reads after a backfill: how many users
-- hold a balance, how many still wait (and how many of those because their
-- signup allocation failed), and the credits held per role.
CREATE FUNCTION credit_allocation_report() RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH per_user AS (
        SELECT u.role, uc.user_id IS NOT NULL AS has_credits,
               coalesce(uc.total_credits, 0) AS total_credits,
               coalesce(uc.remaining_credits, 0) AS remaining_credits
        FROM public.users u
        LEFT JOIN public.user_credits uc ON uc.user_id = u.id
    ),
    per_role AS (
        SELECT coalesce(role, '(null)') AS role_key,
               count(*) AS users,
               count(*) FILTER (WHERE has_credits) AS users_with_credits,
               sum(total_credits) AS total_credits,
               sum(remaining_credits) AS remaining_credits
        FROM per_user
        GROUP BY role
    )
    SELECT jsonb_build_object(
        'users_total', (SELECT count(*) FROM per_user),
        'users_with_credits', (SELECT count(*) FROM per_user WHERE has_credits),
        'users_without_credits', (SELECT count(*) FROM per_user WHERE NOT has_credits),
        'allocation_failures', (SELECT count(*) FROM public.credit_allocation_failures),
        'by_role', (SELECT coalesce(jsonb_object_agg(role_key, jsonb_build_object(
                        'users', users,
                        'users_with_credits', users_with_credits,
                        'total_credits', total_credits,
                        'remaining_credits', remaining_credits)), '{}')
                    FROM per_role)
    );
$$;

REVOKE EXECUTE ON FUNCTION credit_allocation_report() FROM PUBLIC;

COMMENT ON FUNCTION credit_allocation_report() IS
    'Users with and without a balance (allocation_failures: failed signup allocations waiting for the backfill), and credits held per role (the post-backfill verification report).';
