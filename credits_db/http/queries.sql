-- Reads used by the HTTP API (credits_db/http/) that the core API has no call for.
-- Sections are named "-- name: <query>" and loaded with credits_db._queries.parse.

-- name: team_member_limit
-- How many members the user's role allows in their pool, as add_team_member counts
-- it: a NULL or unknown role has the member row's limit; 0 for a missing user.
SELECT coalesce((SELECT coalesce(rc.team_member_limit, fallback.team_member_limit, 0)
                 FROM users AS u
                 LEFT JOIN role_credits AS rc ON rc.role = u.role
                 LEFT JOIN role_credits AS fallback ON fallback.role = 'member'
                 WHERE u.id = %(user_id)s), 0);

-- name: is_team_member
-- Whether the member is in the admin's pool now: POST /api/credits/team-members
-- answers 200 instead of 201 when it was already.
SELECT EXISTS (SELECT 1 FROM public.team_credit_sharing
               WHERE team_admin_id = %(team_admin_id)s::uuid
                 AND team_member_id = %(team_member_id)s::uuid);
