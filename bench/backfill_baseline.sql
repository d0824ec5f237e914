-- Workload 1, B: the bare-SQL limit for the same durable work. The same
-- candidates (users without a balance row), the same role join and member
-- fallback, the same balance rows (allocated_credits = the allocation since
-- revision 0007; opened_after_log_id left to its default, a draw from the log's
-- sequence, as the package leaves it), one log row per credited user with the
-- same description and, since revision 0010, its untracked lot. Nothing else:
-- no advisory lock, no ON CONFLICT arbiter, no jsonb report.
--
-- Nor the package's explicit FOR KEY SHARE lock on the chosen users (revision
-- 0007), chosen on purpose: a row lock is no row left behind, and what it
-- leaves on disk is taken here anyway. The foreign key check of every
-- user_credits row this statement inserts locks that users row FOR KEY SHARE
-- (in the package it then finds the lock held), so both write one heap lock
-- record per user (pg_walinspect, 2000 users, PostgreSQL 15: 2000 Heap LOCK
-- records each, same bytes). What the explicit lock adds is one more probe of
-- users per chosen user and a join, the price of skipping users deleted under
-- the backfill instead of failing with 23503: a concurrency guarantee, charged
-- to A.
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
    INSERT INTO user_credits (user_id, total_credits, allocated_credits)
    SELECT user_id, credits, credits FROM planned
    RETURNING user_id
),
logged AS (
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
    RETURNING id, user_id, amount, source
)
-- Each allocation is an untracked lot (revision 0010), as the package writes it.
INSERT INTO credit_lots (user_id, log_id, source, amount)
SELECT user_id, id, source, amount FROM logged
