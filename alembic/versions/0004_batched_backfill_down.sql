-- credits-db 0004 down: backfill_user_credits() as revisions 0001 and 0003 left
-- it (its privileges and comment survive the replacement), without the batch
-- function and the shared allocation function.

DROP FUNCTION backfill_user_credits_batch(uuid, integer);

CREATE OR REPLACE FUNCTION backfill_user_credits(
    p_dry_run boolean DEFAULT false,
    p_limit   integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_report jsonb;
BEGIN
    IF p_dry_run IS NULL THEN
        RAISE EXCEPTION 'p_dry_run must be true or false, not NULL' USING ERRCODE = '22004';
    END IF;
    IF p_limit IS NOT NULL AND p_limit < 1 THEN
        RAISE EXCEPTION 'p_limit must be a positive number of users or NULL, not %', p_limit
            USING ERRCODE = '22023';
    END IF;

    IF NOT p_dry_run THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('credits_db.backfill_user_credits', 0));
    END IF;

    WITH chosen AS MATERIALIZED (
        SELECT user_id, role, credits, is_fallback
        FROM credits_backfill_candidates
        LIMIT p_limit
    ),
    allocated AS (
        INSERT INTO user_credits (user_id, total_credits)
        SELECT user_id, credits FROM chosen
        WHERE NOT p_dry_run
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id
    ),
    -- One join tells which chosen users this call allocated; the log rows and
    -- every number of the report come from it, so nothing is scanned twice.
    done AS MATERIALIZED (
        SELECT c.* FROM chosen c WHERE p_dry_run
        UNION ALL
        SELECT c.* FROM chosen c JOIN allocated a USING (user_id)
    ),
    logged AS (
        INSERT INTO credit_usage_log (user_id, amount, type, source, description)
        SELECT d.user_id, d.credits, 'credit', 'backfill',
               CASE
                   WHEN NOT d.is_fallback THEN 'backfill allocation for role ' || d.role
                   WHEN d.role IS NULL THEN 'backfill allocation: no role, member allocation (fallback)'
                   ELSE format('backfill allocation: unknown role %L, member allocation (fallback)', d.role)
               END
        FROM done d
        WHERE NOT p_dry_run AND d.credits > 0
    ),
    per_role AS (
        SELECT role, count(*) AS users, sum(credits) AS credits,
               count(*) FILTER (WHERE is_fallback) AS fallback_users
        FROM done
        GROUP BY role
    )
    SELECT jsonb_build_object(
        'users_total', (SELECT count(*) FROM users),
        -- Without a limit every candidate is chosen. With one, count instead of
        -- re-running the anti-join: every balance row belongs to exactly one
        -- existing user (primary key, foreign key), so the difference is exact.
        'users_without_credits', CASE WHEN p_limit IS NULL
                                      THEN (SELECT count(*) FROM chosen)
                                      ELSE (SELECT count(*) FROM users)
                                           - (SELECT count(*) FROM user_credits)
                                 END,
        'users_backfilled', coalesce(sum(users), 0),
        'credits_allocated', coalesce(sum(credits), 0),
        'fallback_role_users', coalesce(sum(fallback_users), 0),
        'by_role', coalesce(jsonb_object_agg(coalesce(role, '(null)'),
                            jsonb_build_object('users', users, 'credits', credits)), '{}'),
        'dry_run', p_dry_run
    )
    INTO v_report
    FROM per_role;
    RETURN v_report;
END
$$;

DROP FUNCTION credits_backfill(boolean, integer, boolean, uuid);
