-- Workload 2, single-row signups. The same script runs against a database with
-- the signup trigger (A) and one with it disabled (B).
\set r random(1, 8)
INSERT INTO users (email, role)
VALUES (gen_random_uuid()::text || '@bench.invalid',
        (ARRAY['member', 'admin', 'team_admin', 'RecruitPro', 'super_admin',
               NULL, 'intern', 'member'])[:r]);
