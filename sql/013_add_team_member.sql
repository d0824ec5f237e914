-- Adds a member to an admin's pool. Checks run in this order, each on its own
-- so that the error names the first thing wrong, and none of them writes:
--   1. a NULL id is an unknown user (CR005): NULL can never name a user;
--   2. admin = member (CR009), before any lookup, since it needs none;
--   3. the admin exists (CR005), and their users row is locked (see below);
--   4. the member exists (CR005);
--   5. the admin's role allows a team, team_member_limit > 0 (CR003); a NULL or
--      unknown role has the member row's limit, like its allocation;
--   6. the member's current pool: this admin's means the pair exists already
--      and the call is a no-op; another admin's is CR004;
--   7. the pool has room (CR002), and the lowest free seat is taken.
--
-- The cap must hold when several adds for one admin run at once. Counting and
-- inserting without a lock lets each of them count the same free seat, so the
-- admin's users row is locked first (FOR NO KEY UPDATE: it queues adds for
-- the same admin and role changes of that admin, but not the foreign-key
-- checks of unrelated inserts), and the count runs after the lock is granted,
-- when READ COMMITTED shows every member an earlier add committed. At
-- REPEATABLE READ and SERIALIZABLE the count comes from the transaction's
-- snapshot, which a lock cannot refresh: there the seat (010) decides, as two
-- adds counting the same free seat insert the same (admin, seat) and the
-- later one fails with 40001.
--
-- Both users rows are locked before the membership row is written (the admin's
-- as above, the member's FOR KEY SHARE, the lock the foreign key check takes):
-- a user deleted while this call waits is then an unknown user (CR005), never
-- a foreign key violation (23503) from the INSERT.
CREATE FUNCTION add_team_member(p_team_admin_id uuid, p_team_member_id uuid) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_admin_role   text;
    v_limit        integer;
    v_current      uuid;
    v_members      bigint;
    v_seat         integer;
    v_inserted     bigint;
BEGIN
    IF p_team_admin_id IS NULL OR p_team_member_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: team admin and member ids must not be NULL'
            USING ERRCODE = 'CR005',
                  DETAIL = format('team_admin_id=%s, team_member_id=%s',
                                  coalesce(p_team_admin_id::text, 'NULL'),
                                  coalesce(p_team_member_id::text, 'NULL'));
    END IF;

    IF p_team_admin_id = p_team_member_id THEN
        RAISE EXCEPTION 'a user cannot join their own team'
            USING ERRCODE = 'CR009', DETAIL = format('user %s', p_team_admin_id);
    END IF;

    SELECT u.role INTO v_admin_role
    FROM public.users u WHERE u.id = p_team_admin_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_team_admin_id
            USING ERRCODE = 'CR005', DETAIL = 'the team admin does not exist';
    END IF;

    PERFORM 1 FROM public.users u WHERE u.id = p_team_member_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_team_member_id
            USING ERRCODE = 'CR005', DETAIL = 'the team member does not exist';
    END IF;

    SELECT coalesce(rc.team_member_limit, fallback.team_member_limit, 0) INTO v_limit
    FROM (SELECT 1) AS one
    LEFT JOIN public.role_credits rc ON rc.role = v_admin_role
    LEFT JOIN public.role_credits fallback ON fallback.role = 'member';
    IF v_limit <= 0 THEN
        RAISE EXCEPTION 'user % is not a team admin', p_team_admin_id
            USING ERRCODE = 'CR003',
                  DETAIL = format('role %s allows no team members',
                                  coalesce(quote_literal(v_admin_role), 'NULL'));
    END IF;

    SELECT t.team_admin_id INTO v_current
    FROM public.team_credit_sharing t WHERE t.team_member_id = p_team_member_id;
    IF FOUND THEN
        IF v_current = p_team_admin_id THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'user % is already a member of another team', p_team_member_id
            USING ERRCODE = 'CR004', DETAIL = format('team admin %s', v_current);
    END IF;

    SELECT count(*),
           (SELECT s FROM generate_series(1, v_limit) AS s
            WHERE NOT EXISTS (SELECT FROM public.team_credit_sharing taken
                              WHERE taken.team_admin_id = p_team_admin_id AND taken.seat = s)
            ORDER BY s LIMIT 1)
    INTO v_members, v_seat
    FROM public.team_credit_sharing t WHERE t.team_admin_id = p_team_admin_id;
    IF v_members >= v_limit OR v_seat IS NULL THEN
        RAISE EXCEPTION 'team of % is full', p_team_admin_id
            USING ERRCODE = 'CR002',
                  DETAIL = format('%s of %s members', v_members, v_limit);
    END IF;

    -- The member may have joined another pool after step 6 looked (that add
    -- locked a different admin); the unique member constraint decides, and the
    -- loser gets CR004 rather than a unique violation. Any conflict is left to
    -- DO NOTHING, so that at REPEATABLE READ one with a row the snapshot
    -- cannot see (the member's or the seat's) is 40001.
    INSERT INTO public.team_credit_sharing (team_admin_id, team_member_id, seat)
    VALUES (p_team_admin_id, p_team_member_id, v_seat)
    ON CONFLICT DO NOTHING
    RETURNING id INTO v_inserted;
    IF v_inserted IS NULL THEN
        SELECT t.team_admin_id INTO v_current
        FROM public.team_credit_sharing t WHERE t.team_member_id = p_team_member_id;
        IF v_current IS NULL THEN
            -- The seat, not the member, was taken: only an add that skipped
            -- the admin's lock could do that. Nothing was written.
            RAISE EXCEPTION 'seat % of the team of % was taken by a concurrent call',
                v_seat, p_team_admin_id
                USING ERRCODE = '40001', HINT = 'Retry the call.';
        END IF;
        RAISE EXCEPTION 'user % is already a member of another team', p_team_member_id
            USING ERRCODE = 'CR004', DETAIL = format('team admin %s', v_current);
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION add_team_member(uuid, uuid) FROM PUBLIC;

COMMENT ON FUNCTION add_team_member(uuid, uuid) IS
    'Let p_team_member_id spend from p_team_admin_id''s balance. No-op if already so; CR002 full, CR003 not a team admin, CR004 in another team, CR005 unknown user, CR009 self.';
