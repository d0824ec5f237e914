-- The role_credits rows an allocation reads, locked FOR SHARE before it reads
-- them: each role's own row, or the member row for a NULL or unknown one;
-- every row when p_roles is NULL (a backfill, which may allocate any role).
-- Every opener of an account calls this first, so that an operator's UPDATE
-- of a role (which takes the row's lock) and the opener are ordered: at READ
-- COMMITTED the opener's next statement reads the committed change, or the
-- change waits until the opener's account is committed and visible to it
-- (schedule_renewals, 030). At REPEATABLE READ and SERIALIZABLE a row changed
-- after the opener's snapshot raises 40001 here (retryable: nothing written).
-- In role order, so that two operators' changes of several roles and the
-- openers locking them never wait for each other in a circle.
CREATE FUNCTION credits_internal.lock_allocation_roles(p_roles text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1
    FROM public.role_credits r
    WHERE p_roles IS NULL
       OR r.role IN (SELECT coalesce(rc.role, 'member')
                     FROM unnest(p_roles) AS x(role)
                     LEFT JOIN public.role_credits rc ON rc.role = x.role)
    ORDER BY r.role
    FOR SHARE OF r;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.lock_allocation_roles(text[]) FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.lock_allocation_roles(text[]) IS
    'Internal: lock FOR SHARE the role_credits rows an allocation to these roles reads (all when NULL), in role order.';
