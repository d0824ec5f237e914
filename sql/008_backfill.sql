-- Users who exist but have never received an allocation, with what they would
-- get. Installing credits-db allocates nothing by itself; this view is the
-- operator's to-do list and the single definition the backfill works from.
CREATE VIEW credits_backfill_candidates AS
SELECT u.id AS user_id,
       u.role,
       coalesce(rc.credits, fallback.credits, 0) AS credits,
       rc.role IS NULL AS is_fallback
FROM public.users u
LEFT JOIN public.role_credits rc ON rc.role = u.role
LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
WHERE NOT EXISTS (SELECT 1 FROM public.user_credits uc WHERE uc.user_id = u.id);

REVOKE ALL ON credits_backfill_candidates FROM PUBLIC;

-- The one allocation statement behind both backfill entry points (below). Safe
-- to repeat and to run beside signups and other backfills:
--   * ON CONFLICT DO NOTHING never overwrites a balance, and a log row is
--     written only for a balance row this call actually inserted;
--   * a transaction-scoped advisory lock queues concurrent backfills, so the
--     second one starts after the first commits and finds nothing left to do
--     (rather than racing it row by row, which could deadlock);
--   * signups allocate in their own transaction; a user they have not
--     committed is invisible here, one they have committed has a row already;
--   * a role change of a user without a balance row opens the account at the
--     new role's allocation (019): if it is in flight, the INSERT below waits
--     for it and then finds the row, so the old role is never allocated;
--   * the chosen users are locked FOR KEY SHARE (the lock the foreign key
--     check would take, which then finds it held) before their rows are
--     written: a user deleted meanwhile drops out of the batch and is counted
--     in users_skipped, instead of failing the whole statement with 23503.
--     The lock does not block the host's UPDATEs of users, only deletes.
--
-- Two ways to choose whom to allocate (p_keyset):
--   * false: any p_limit users of credits_backfill_candidates (all if NULL),
--     and the report counts users_total and users_without_credits;
--   * true: among the next p_limit users in primary-key order after
--     p_after_user_id, those without a balance row. Each such batch reads its
--     own window of users and probes user_credits once per user, so a batch
--     costs the same at the millionth user as at the first; the report gives
--     the window (users_scanned, last_user_id) and no totals, which would
--     cost a scan of every user per batch.
-- Every branch below is gated by conditions on the arguments alone, which a
-- cached generic plan evaluates once per call (a one-time filter): the mode
-- not taken costs nothing, and the window is an index range scan whether the
-- plan is generic or custom. (Forcing custom plans with a SET clause would
-- also re-plan the foreign-key check of every inserted balance row; measured in
-- docs/performance.md.)
CREATE FUNCTION credits_internal.backfill(
    p_dry_run       boolean,
    p_limit         integer,
    p_keyset        boolean,
    p_after_user_id uuid
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_report jsonb;
BEGIN
    IF p_dry_run IS NULL THEN
        RAISE EXCEPTION 'p_dry_run must be true or false, not NULL' USING ERRCODE = '22004';
    END IF;
    IF (p_limit IS NOT NULL AND p_limit < 1) OR (p_keyset AND p_limit IS NULL) THEN
        RAISE EXCEPTION 'p_limit must be a positive number of users%, not %',
            CASE WHEN p_keyset THEN '' ELSE ' or NULL' END, coalesce(p_limit::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;

    IF NOT p_dry_run THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('credits_db.backfill_user_credits', 0));
        -- Ordered with a role that starts renewing meanwhile (032, 030).
        PERFORM credits_internal.lock_allocation_roles(NULL);
    END IF;

    WITH population AS MATERIALIZED (
        -- Counted once: every batch of a p_limit backfill pays this scan of users.
        SELECT count(*) AS users_total FROM public.users
    ),
    user_window AS MATERIALIZED (
        -- Two branches, so that the cursor is an index condition: an OR with
        -- "p_after_user_id IS NULL" would make every batch read the index
        -- from its start.
        (SELECT u.id FROM public.users u
         WHERE p_keyset AND p_after_user_id IS NULL
         ORDER BY u.id
         LIMIT p_limit)
        UNION ALL
        (SELECT u.id FROM public.users u
         WHERE p_keyset AND u.id > p_after_user_id
         ORDER BY u.id
         LIMIT p_limit)
    ),
    chosen AS MATERIALIZED (
        (SELECT c.user_id, c.role, c.credits, c.is_fallback
         FROM public.credits_backfill_candidates c
         WHERE NOT p_keyset
         LIMIT p_limit)
        UNION ALL
        -- LIMIT 1 keeps each lookup a probe by primary key, one per user of the
        -- window, whatever the statistics of user_credits say.
        SELECT c.user_id, c.role, c.credits, c.is_fallback
        FROM user_window w
        CROSS JOIN LATERAL (
            SELECT * FROM public.credits_backfill_candidates c WHERE c.user_id = w.id LIMIT 1
        ) c
    ),
    locked AS MATERIALIZED (
        SELECT u.id FROM public.users u
        WHERE NOT p_dry_run AND u.id IN (SELECT c.user_id FROM chosen c)
        FOR KEY SHARE OF u
    ),
    -- A renewing role's allowance expires with the account's first period
    -- (030), which starts now.
    renewing AS MATERIALIZED (
        SELECT c.user_id,
               (now() AT TIME ZONE 'UTC' + r.renewal_interval) AT TIME ZONE 'UTC' AS period_ends_at
        FROM chosen c
        LEFT JOIN public.role_credits rc ON rc.role = c.role
        JOIN public.role_credits r ON r.role = coalesce(rc.role, 'member')
        WHERE r.renewal_interval IS NOT NULL
    ),
    allocated AS (
        INSERT INTO public.user_credits
            (user_id, total_credits, allocated_credits, tracked_credits, period_ends_at,
             period_allowance)
        SELECT c.user_id, c.credits, c.credits,
               CASE WHEN n.user_id IS NOT NULL THEN c.credits ELSE 0 END,
               n.period_ends_at, CASE WHEN n.user_id IS NOT NULL THEN c.credits END
        FROM chosen c
        JOIN locked l ON l.id = c.user_id
        LEFT JOIN renewing n ON n.user_id = c.user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id
    ),
    cleared AS (
        DELETE FROM public.credit_allocation_failures f
        USING allocated a WHERE f.user_id = a.user_id
    ),
    -- One join tells which chosen users this call allocated; the log rows and
    -- every number of the report come from it, so nothing is scanned twice.
    done AS MATERIALIZED (
        SELECT c.* FROM chosen c WHERE p_dry_run
        UNION ALL
        SELECT c.* FROM chosen c JOIN allocated a USING (user_id)
    ),
    logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT d.user_id, d.credits, 'credit', 'backfill',
               CASE
                   WHEN NOT d.is_fallback THEN 'backfill allocation for role ' || d.role
                   WHEN d.role IS NULL THEN 'backfill allocation: no role, member allocation (fallback)'
                   ELSE format('backfill allocation: unknown role %L, member allocation (fallback)', d.role)
               END
        FROM done d
        WHERE NOT p_dry_run AND d.credits > 0
        RETURNING id, user_id, amount, source
    ),
    -- Each allocation is a lot (026), expiring with the period if the role renews.
    lots AS (
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
        SELECT g.user_id, g.id, g.source, g.amount, n.period_ends_at
        FROM logged g
        LEFT JOIN renewing n ON n.user_id = g.user_id
    ),
    per_role AS (
        SELECT role, count(*) AS users, sum(credits) AS credits,
               count(*) FILTER (WHERE is_fallback) AS fallback_users
        FROM done
        GROUP BY role
    )
    SELECT jsonb_build_object(
        'users_backfilled', coalesce(sum(users), 0),
        'credits_allocated', coalesce(sum(credits), 0),
        'fallback_role_users', coalesce(sum(fallback_users), 0),
        'by_role', coalesce(jsonb_object_agg(coalesce(role, '(null)'),
                            jsonb_build_object('users', users, 'credits', credits)), '{}'),
        'users_skipped', CASE WHEN p_dry_run THEN 0
                              ELSE (SELECT count(*) FROM chosen) - (SELECT count(*) FROM locked)
                         END,
        'dry_run', p_dry_run
    ) || CASE
        WHEN p_keyset THEN jsonb_build_object(
            'users_scanned', (SELECT count(*) FROM user_window),
            'last_user_id', (SELECT id FROM user_window ORDER BY id DESC LIMIT 1))
        ELSE jsonb_build_object(
            'users_total', (SELECT users_total FROM population),
            -- Without a limit every candidate is chosen. With one, count instead
            -- of re-running the anti-join: every balance row belongs to exactly
            -- one existing user (primary key, foreign key), so the difference is exact.
            'users_without_credits', CASE WHEN p_limit IS NULL
                                          THEN (SELECT count(*) FROM chosen)
                                          ELSE (SELECT users_total FROM population)
                                               - (SELECT count(*) FROM public.user_credits)
                                     END)
    END
    INTO v_report
    FROM per_role;
    RETURN v_report;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.backfill(boolean, integer, boolean, uuid) FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.backfill(boolean, integer, boolean, uuid) IS
    'Internal: the allocation behind backfill_user_credits() and backfill_user_credits_batch().';

-- Allocates every user without a balance row (or p_limit of them), by role,
-- in one set-based statement; p_dry_run reports without writing. The body is
-- SQL-standard, bound to credits_internal.backfill when created: an overload of that
-- name created later can never come between them.
CREATE FUNCTION backfill_user_credits(
    p_dry_run boolean DEFAULT false,
    p_limit   integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN credits_internal.backfill(p_dry_run, p_limit, false, NULL::uuid);

REVOKE EXECUTE ON FUNCTION backfill_user_credits(boolean, integer) FROM PUBLIC;

COMMENT ON FUNCTION backfill_user_credits(boolean, integer) IS
    'Allocate credits by role to every user without a balance row (source backfill). Idempotent; p_limit batches, p_dry_run reports without writing.';

-- Batches for large tables: walk users in primary-key order, p_limit users per
-- call, passing each call's last_user_id to the next (NULL for the first);
-- last_user_id NULL means no user is left after the cursor. A call costs the
-- same wherever the cursor is, where backfill_user_credits(p_limit => n)
-- looks for candidates among all users on every call. A user who lost their
-- signup allocation behind the cursor is left to a final
-- backfill_user_credits() (the CLI makes that call).
CREATE FUNCTION backfill_user_credits_batch(
    p_after_user_id uuid DEFAULT NULL,
    p_limit         integer DEFAULT 50000
) RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN credits_internal.backfill(false, p_limit, true, p_after_user_id);

REVOKE EXECUTE ON FUNCTION backfill_user_credits_batch(uuid, integer) FROM PUBLIC;

COMMENT ON FUNCTION backfill_user_credits_batch(uuid, integer) IS
    'Backfill the next p_limit users after p_after_user_id in primary-key order; returns last_user_id for the next call (NULL when done).';
