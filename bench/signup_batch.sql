-- Workload 2, A: a bulk signup, INSERT ... SELECT; the statement-level trigger
-- allocates every new user. (In the baseline database the trigger is disabled
-- and signup_batch_baseline.sql is run instead.)
INSERT INTO users (email, role)
SELECT 's' || g || '@bench.invalid',
       (ARRAY['member', 'admin', 'team_admin', 'RecruitPro', 'super_admin',
              NULL, 'intern', 'member'])[1 + g %% 8]
FROM generate_series(1, %(n)s) AS g
