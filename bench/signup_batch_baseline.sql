-- Workload 2, B: the same INSERT with the trigger disabled, and the balance and
-- log rows written set-based in the same statement (data-modifying CTEs): the
-- least SQL that leaves the same rows behind (the balance rows with
-- allocated_credits = the allocation since revision 0007, opened_after_log_id
-- from its default as in the package's trigger; since revision 0010 each
-- allocation's untracked lot).
WITH new_users AS (
    INSERT INTO users (email, role)
    SELECT 's' || g || '@bench.invalid',
           (ARRAY['member', 'admin', 'team_admin', 'RecruitPro', 'super_admin',
                  NULL, 'intern', 'member'])[1 + g %% 8]
    FROM generate_series(1, %(n)s) AS g
    RETURNING id, role
),
planned AS MATERIALIZED (
    SELECT n.id AS user_id, n.role,
           coalesce(rc.credits, fallback.credits, 0) AS credits,
           rc.role IS NULL AS is_fallback
    FROM new_users n
    LEFT JOIN role_credits rc ON rc.role = n.role
    LEFT JOIN role_credits fallback ON fallback.role = 'member'
),
allocated AS (
    INSERT INTO user_credits (user_id, total_credits, allocated_credits)
    SELECT user_id, credits, credits FROM planned
    RETURNING user_id
),
logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source, description)
    SELECT p.user_id, p.credits, 'credit', 'signup',
           CASE
               WHEN NOT p.is_fallback THEN format('signup allocation for role %%s', p.role)
               WHEN p.role IS NULL THEN 'signup allocation: no role, member allocation (fallback)'
               ELSE format('signup allocation: unknown role %%L, member allocation (fallback)', p.role)
           END
    FROM planned p
    JOIN allocated a USING (user_id)
    WHERE p.credits > 0
    RETURNING id, user_id, amount, source
)
-- Each allocation is an untracked lot (revision 0010), as the trigger writes it.
INSERT INTO credit_lots (user_id, log_id, source, amount)
SELECT user_id, id, source, amount FROM logged
