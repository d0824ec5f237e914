-- A user whose role changes to one with a larger allocation receives the
-- difference, once, logged as source 'role_change'. A smaller allocation never
-- takes credits back: they were granted, and may be spent already.
--
-- Row level, with a WHEN clause on the role: the host application updates its
-- users table for many reasons (last login, email...), and those UPDATEs must
-- not pay for credits at all. A statement-level trigger with transition tables
-- would capture every updated row of every UPDATE (PostgreSQL allows no column
-- list with transition tables); this one does not even run unless a role
-- really changed.
--
-- Users without a balance row are left alone: the backfill allocates them by
-- their role as it is then, which already includes the new role.
--
-- Changing a role must not fail because of credits. The one foreseeable
-- conflict, a top-up that would push total_credits past 2^31-1, is capped at
-- 2^31-1 (the user gets what fits) with a WARNING. Any other error (a deadlock,
-- a lock timeout) is not swallowed: there is no later repair for a lost
-- top-up, so the UPDATE fails and can be retried whole.
--
-- The balance row is locked after the users row (which the UPDATE holds), the
-- same order every writer of both uses, so this adds no deadlock.
CREATE FUNCTION credits_topup_on_role_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_increase bigint;
    v_total    integer;
    v_topup    integer;
BEGIN
    SELECT coalesce(rc_new.credits, fallback.credits, 0)
             - coalesce(rc_old.credits, fallback.credits, 0)
    INTO v_increase
    FROM (SELECT) AS one
    LEFT JOIN role_credits rc_old ON rc_old.role = OLD.role
    LEFT JOIN role_credits rc_new ON rc_new.role = NEW.role
    LEFT JOIN role_credits fallback ON fallback.role = 'member';

    IF v_increase <= 0 THEN
        RETURN NULL;
    END IF;

    SELECT uc.total_credits INTO v_total
    FROM user_credits uc WHERE uc.user_id = NEW.id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    v_topup := least(v_increase, 2147483647 - v_total);
    IF v_topup < v_increase THEN
        RAISE WARNING 'credits-db: role change top-up for user % capped at % of % (total_credits limit 2147483647)',
            NEW.id, v_topup, v_increase;
    END IF;
    IF v_topup <= 0 THEN
        RETURN NULL;
    END IF;

    UPDATE user_credits
    SET total_credits = total_credits + v_topup, last_updated = now()
    WHERE user_id = NEW.id;

    INSERT INTO credit_usage_log (user_id, amount, type, source, description)
    VALUES (NEW.id, v_topup, 'credit', 'role_change',
            CASE WHEN v_topup = v_increase
                 THEN format('role changed to %s: allocation raised by %s',
                             coalesce(quote_literal(NEW.role), 'NULL'), v_increase)
                 ELSE format('role changed to %s: allocation raised by %s, capped at %s (total_credits limit)',
                             coalesce(quote_literal(NEW.role), 'NULL'), v_increase, v_topup)
            END);
    RETURN NULL;
END
$$;

-- Like the signup trigger, creating it locks users against writes for an
-- instant (SHARE ROW EXCLUSIVE, no scan).
CREATE TRIGGER users_topup_credits_on_role_change
    AFTER UPDATE OF role ON users
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role)
    EXECUTE FUNCTION credits_topup_on_role_change();

REVOKE EXECUTE ON FUNCTION credits_topup_on_role_change() FROM PUBLIC;

COMMENT ON FUNCTION credits_topup_on_role_change() IS
    'Trigger: top up total_credits when users.role changes to a role with a larger allocation (never lowers it).';
