-- Workload 1, B: the bare-SQL limit for the same durable work. The same
-- candidates (users without a balance row), the same role join and member
-- fallback, the same balance rows, one log row per credited user with the same
-- description. Nothing else: no advisory lock, no ON CONFLICT arbiter, no
-- jsonb report.
WITH planned AS MATERIALIZED (
    SELECT u.id AS user_id,
           u.role,
           coalesce(rc.credits, fallback.credits, 0) AS credits,
           rc.role IS NULL AS is_fallback
    FROM users u
    LEFT JOIN role_credits rc ON rc.role = u.role
    LEFT JOIN role_credits fallback ON fallback.role = 'member'
    WHERE NOT EXISTS (SELECT 1 FROM user_credits uc WHERE uc.user_id = u.id)
),
ins AS (
    INSERT INTO user_credits (user_id, total_credits)
    SELECT user_id, credits FROM planned
    RETURNING user_id
)
INSERT INTO credit_usage_log (user_id, amount, type, source, description)
SELECT p.user_id, p.credits, 'credit', 'backfill',
       CASE
           WHEN NOT p.is_fallback THEN format('backfill allocation for role %%s', p.role)
           WHEN p.role IS NULL THEN 'backfill allocation: no role, member allocation (fallback)'
           ELSE format('backfill allocation: unknown role %%L, member allocation (fallback)', p.role)
       END
FROM planned p
JOIN ins USING (user_id)
WHERE p.credits > 0
