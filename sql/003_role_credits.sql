-- The allocation each role receives. Role names are case-sensitive, exactly as
-- stored in users.role. Changing a row changes future allocations only: no
-- existing balance is recomputed from this table.
CREATE TABLE role_credits (
    role              text PRIMARY KEY,
    credits           integer NOT NULL
                      CONSTRAINT role_credits_credits_nonnegative CHECK (credits >= 0),
    team_member_limit integer NOT NULL DEFAULT 0
                      CONSTRAINT role_credits_team_member_limit_nonnegative
                      CHECK (team_member_limit >= 0)
);

INSERT INTO role_credits (role, credits, team_member_limit) VALUES
    ('member',       350, 0),
    ('admin',       1000, 0),
    ('team_admin',  5000, 4),
    ('RecruitPro',  1000, 0),
    ('super_admin', 10000, 0);

COMMENT ON TABLE role_credits IS
    'Credits allocated per users.role. A NULL or unknown role gets the member row (the fallback).';
