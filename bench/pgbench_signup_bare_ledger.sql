-- Workload 2, C: the durable work of one signup with credits (the user, its
-- balance and its log row) in one bare statement, on a copy with the trigger
-- disabled: the floor any signup allocation can reach. Its distance from the
-- one-row INSERT (B) is the price of the two extra rows alone.
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
           CASE WHEN rc.role IS NOT NULL THEN 'signup allocation for role ' || n.role
                ELSE 'signup allocation: member allocation (fallback)' END AS description
    FROM new_user n
    LEFT JOIN role_credits rc ON rc.role = n.role
    LEFT JOIN role_credits fallback ON fallback.role = 'member'
),
balance AS (
    INSERT INTO user_credits (user_id, total_credits)
    SELECT id, credits FROM planned
)
INSERT INTO credit_usage_log (user_id, amount, type, source, description)
SELECT id, credits, 'credit', 'signup', description FROM planned;
