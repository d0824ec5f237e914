-- A team admin shares their own balance with their members: a member whose own
-- account cannot pay for a debit spends from the admin's account instead. The
-- pool is the admin's user_credits row itself, so there is no second balance to
-- keep in step. A member belongs to at most one pool (UNIQUE), so a debit never
-- has to choose between pools. Deleting either user ends the membership.
--
-- Each member holds a numbered seat in the pool, 1 to the admin role's
-- team_member_limit, unique per admin. The seat is what makes the cap hold at
-- REPEATABLE READ and SERIALIZABLE: two adds that each counted a free seat in
-- their own snapshot pick the same seat, and the second insert conflicts with
-- a row it cannot see (40001). At READ COMMITTED the admin's row lock already
-- orders them (see add_team_member).
--
-- Its two foreign keys lock the host's users table against writes for the
-- instant of this CREATE TABLE (SHARE ROW EXCLUSIVE; nothing to scan).
CREATE TABLE team_credit_sharing (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_admin_id  uuid NOT NULL
                   CONSTRAINT team_credit_sharing_admin_fkey
                   REFERENCES users (id) ON DELETE CASCADE,
    team_member_id uuid NOT NULL
                   CONSTRAINT team_credit_sharing_member_fkey
                   REFERENCES users (id) ON DELETE CASCADE
                   CONSTRAINT team_credit_sharing_member_unique UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    seat           integer NOT NULL
                   CONSTRAINT team_credit_sharing_seat_positive CHECK (seat > 0),
    CONSTRAINT team_credit_sharing_not_self CHECK (team_admin_id <> team_member_id),
    CONSTRAINT team_credit_sharing_seat_unique UNIQUE (team_admin_id, seat)
);

-- Counting a pool's members (the cap check in add_team_member) and the cascade
-- when an admin is deleted are both lookups by admin.
-- The table is created empty just above: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX team_credit_sharing_admin_idx ON team_credit_sharing (team_admin_id);

REVOKE ALL ON team_credit_sharing FROM PUBLIC;

COMMENT ON TABLE team_credit_sharing IS
    'Team pools: each member may spend from their admin''s balance when their own is short. One pool per member.';
