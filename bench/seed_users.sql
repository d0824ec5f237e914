-- Users as they existed before credits-db: mixed roles, including NULL and an
-- unknown role ('intern'), no balance row and no log row. Run with the signup
-- trigger disabled (bench.server.seed_template does this in one transaction).
-- %(start)s and %(n)s: the first number and the count of users to add.
INSERT INTO users (email, role)
SELECT 'u' || g || '@bench.invalid',
       (ARRAY['member', 'admin', 'team_admin', 'RecruitPro', 'super_admin',
              NULL, 'intern', 'member'])[1 + g %% 8]
FROM generate_series(%(start)s::bigint, %(start)s::bigint + %(n)s - 1) AS g
