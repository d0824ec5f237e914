-- A user whose role changes to one with a larger allocation receives the
-- difference, once, logged as source 'role_change'. A smaller allocation never
-- takes credits back: they were granted, and may be spent already.
--
-- Statement level with transition tables, so a bulk role change (UPDATE users
-- SET role = ... WHERE ...) is a few set-based statements, not one function
-- call per row. PostgreSQL does not allow a column list (UPDATE OF role) with
-- transition tables, so it fires for every UPDATE of users and finds the
-- changed roles itself; an UPDATE that changes no role writes nothing.
--
-- Users without a balance row are left alone: the backfill allocates them by
-- their role as it is then, which already includes the new role.
--
-- Changing a role must not fail because of credits. The one foreseeable
-- conflict, a top-up that would push total_credits past 2^31-1, is capped at
-- 2^31-1 (the user gets what fits) with a WARNING naming the users. Any other
-- error (a deadlock, a lock timeout) is not swallowed: there is no later
-- repair for a lost top-up, so the UPDATE fails and can be retried whole.
--
-- Balance rows are locked in ascending user_id order before they are updated,
-- so two bulk role changes over overlapping users cannot deadlock each other.
CREATE FUNCTION credits_topup_on_role_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_capped uuid[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id AS user_id, n.role AS new_role,
               coalesce(rc_new.credits, fallback.credits, 0)
                 - coalesce(rc_old.credits, fallback.credits, 0) AS increase
        FROM old_users o
        JOIN new_users n ON n.id = o.id
        LEFT JOIN role_credits rc_old ON rc_old.role = o.role
        LEFT JOIN role_credits rc_new ON rc_new.role = n.role
        LEFT JOIN role_credits fallback ON fallback.role = 'member'
        WHERE o.role IS DISTINCT FROM n.role
    ),
    locked AS MATERIALIZED (
        SELECT uc.user_id, c.new_role, c.increase,
               least(c.increase, 2147483647 - uc.total_credits) AS topup
        FROM user_credits uc
        JOIN changed c ON c.user_id = uc.user_id
        WHERE c.increase > 0
        ORDER BY uc.user_id
        FOR NO KEY UPDATE OF uc
    ),
    topped AS (
        UPDATE user_credits uc
        SET total_credits = uc.total_credits + l.topup, last_updated = now()
        FROM locked l
        WHERE uc.user_id = l.user_id AND l.topup > 0
        RETURNING uc.user_id
    ),
    logged AS (
        INSERT INTO credit_usage_log (user_id, amount, type, source, description)
        SELECT l.user_id, l.topup, 'credit', 'role_change',
               CASE WHEN l.topup = l.increase
                    THEN format('role changed to %s: allocation raised by %s',
                                coalesce(quote_literal(l.new_role), 'NULL'), l.increase)
                    ELSE format('role changed to %s: allocation raised by %s, capped at %s (total_credits limit)',
                                coalesce(quote_literal(l.new_role), 'NULL'), l.increase, l.topup)
               END
        FROM locked l
        JOIN topped t ON t.user_id = l.user_id
    )
    SELECT array_agg(l.user_id ORDER BY l.user_id) INTO v_capped
    FROM locked l WHERE l.topup < l.increase;

    IF v_capped IS NOT NULL THEN
        RAISE WARNING 'credits-db: role change top-up capped at total_credits 2147483647 for % user(s): %',
            cardinality(v_capped), array_to_string(v_capped[1:20], ', ');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_topup_credits_on_role_change
    AFTER UPDATE ON users
    REFERENCING OLD TABLE AS old_users NEW TABLE AS new_users
    FOR EACH STATEMENT EXECUTE FUNCTION credits_topup_on_role_change();

REVOKE EXECUTE ON FUNCTION credits_topup_on_role_change() FROM PUBLIC;

COMMENT ON FUNCTION credits_topup_on_role_change() IS
    'Trigger: top up total_credits when users.role changes to a role with a larger allocation (never lowers it).';
