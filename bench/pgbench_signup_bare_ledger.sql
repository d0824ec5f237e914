-- Workload 2, C: the durable work of one signup with credits (the user, its
-- balance, its log row and, since revision 0010, its lot) in one bare
-- statement, on a copy with the trigger disabled: the floor any signup
-- allocation can reach. Its distance from the one-row INSERT (B) is the price
-- of the extra rows alone. The balance row carries allocated_credits = the
-- allocation (revision 0007) and takes its opened_after_log_id from the
-- column's default, as the package's trigger does; the log row joins the
-- inserted balance row (RETURNING), so the account is opened (its watermark
-- drawn from the log's sequence) before its entry is written, as in the
-- trigger. An unreferenced data-modifying CTE would run after the log INSERT,
-- and the account would not own its allocation. The descriptions are the
-- trigger's (no role, unknown role).
\set r random(1, 8)
WITH new_user AS (
    INSERT INTO users (email, role)
    VALUES (gen_random_uuid()::text || '@bench.invalid',
            (ARRAY['member', 'admin', 'team_admin', 'RecruitPro', 'super_admin',
                   NULL, 'intern', 'member'])[:r])
    RETURNING id, role
),
planned AS (
    SELECT n.id, coalesce(rc.credits, fallback.credits) AS credits,
           CASE
               WHEN rc.role IS NOT NULL THEN 'signup allocation for role ' || n.role
               WHEN n.role IS NULL THEN 'signup allocation: no role, member allocation (fallback)'
               ELSE format('signup allocation: unknown role %L, member allocation (fallback)', n.role)
           END AS description
    FROM new_user n
    LEFT JOIN role_credits rc ON rc.role = n.role
    LEFT JOIN role_credits fallback ON fallback.role = 'member'
),
balance AS (
    INSERT INTO user_credits (user_id, total_credits, allocated_credits)
    SELECT id, credits, credits FROM planned
    RETURNING user_id
),
logged AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source, description)
    SELECT p.id, p.credits, 'credit', 'signup', p.description
    FROM planned p JOIN balance b ON b.user_id = p.id
    RETURNING id, user_id, amount, source
)
-- The allocation is an untracked lot (revision 0010), as the trigger writes it.
INSERT INTO credit_lots (user_id, log_id, source, amount)
SELECT user_id, id, source, amount FROM logged;
