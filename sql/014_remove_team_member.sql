-- Removing needs no lock on the admin: it can only lower a pool's head count,
-- which never breaks the cap. A debit already past its membership lookup may
-- still spend from the pool; it is ordered before the removal.
-- A NULL id is an unknown user (CR005), as in add_team_member; an unknown but
-- non-NULL pair simply is not a membership, so the answer is false.
CREATE FUNCTION remove_team_member(p_team_admin_id uuid, p_team_member_id uuid) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_team_admin_id IS NULL OR p_team_member_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: team admin and member ids must not be NULL'
            USING ERRCODE = 'CR005',
                  DETAIL = format('team_admin_id=%s, team_member_id=%s',
                                  coalesce(p_team_admin_id::text, 'NULL'),
                                  coalesce(p_team_member_id::text, 'NULL'));
    END IF;

    DELETE FROM public.team_credit_sharing t
    WHERE t.team_admin_id = p_team_admin_id AND t.team_member_id = p_team_member_id;
    RETURN FOUND;
END
$$;

REVOKE EXECUTE ON FUNCTION remove_team_member(uuid, uuid) FROM PUBLIC;

COMMENT ON FUNCTION remove_team_member(uuid, uuid) IS
    'End a team membership; true if it existed. The member keeps their own balance.';
