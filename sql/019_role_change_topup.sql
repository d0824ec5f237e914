-- Entitlement: an account is entitled to the largest role allocation it has
-- been given, allocated_credits (004). When a user's role changes, the account
-- is raised to the new role's allocation if that is larger, by the
-- difference, logged as source 'role_change'; it is never lowered. So a
-- demotion never takes credits back (they were granted, and may be spent
-- already), and a promotion back to a role held before adds nothing: role
-- churn cannot mint credits.
--
-- Row level, with a WHEN clause on the role: the host application updates its
-- users table for many reasons (last login, email...), and those UPDATEs must
-- not pay for credits at all. A statement-level trigger with transition tables
-- would capture every updated row of every UPDATE (PostgreSQL allows no column
-- list with transition tables); this one does not even run unless a role
-- really changed.
--
-- A user without a balance row (the backfill has not reached them, or their
-- signup allocation failed) has their account opened here, at the new role's
-- allocation, logged as source 'backfill' exactly as the backfill would. This
-- is what keeps a role change from being lost to a backfill or grant racing
-- it: neither can see the other's uncommitted work, but both insert the
-- balance row, so the second inserter waits for the first and then finds the
-- row (the backfill and the grant do nothing more; this trigger tops the
-- account up). At REPEATABLE READ and SERIALIZABLE the waiting side gets
-- 40001 instead, and retries.
--
-- Changing a role must not fail because of credits. The one foreseeable
-- conflict, a top-up that would push total_credits past 2^31-1, is capped at
-- 2^31-1 (the user gets what fits) with a WARNING. Any other error (a deadlock,
-- a lock timeout) is not swallowed: there is no later repair for a lost
-- top-up, so the UPDATE fails and can be retried whole.
--
-- A renewing role (030): the entitlement is per period. The top-up raises
-- the current period's allowance (period_allowance) to the new role's, as a
-- lot expiring with the period; it never lowers it, and the next renewal
-- gives the new role's allowance.
--
-- The balance row is locked after the users row (which the UPDATE holds), the
-- same order every writer of both uses, so this adds no deadlock.
CREATE FUNCTION credits_internal.topup_on_role_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_credits   integer;
    v_interval  interval;
    v_allocated integer;
    v_total     integer;
    v_ends_at   timestamptz;
    v_allowance integer;
    v_anchor    timestamptz;
    v_have      integer;
    v_topup     integer;
    v_opened    uuid;
BEGIN
    -- Ordered with a role that starts renewing meanwhile (032, 030): what is
    -- read next is the role as committed once the lock is held.
    PERFORM credits_internal.lock_allocation_roles(ARRAY[NEW.role]);
    SELECT coalesce(rc.credits, fallback.credits, 0),
           CASE WHEN rc.role IS NULL THEN fallback.renewal_interval ELSE rc.renewal_interval END
    INTO v_credits, v_interval
    FROM (SELECT) AS one
    LEFT JOIN public.role_credits rc ON rc.role = NEW.role
    LEFT JOIN public.role_credits fallback ON fallback.role = 'member';

    -- allocated_credits only ever grows, and so does a live period's
    -- allowance: if what is visible covers the new role already, the locked
    -- row does too, and nothing needs a lock.
    SELECT uc.allocated_credits, uc.period_ends_at, uc.period_allowance
    INTO v_allocated, v_ends_at, v_allowance
    FROM public.user_credits uc WHERE uc.user_id = NEW.id;
    IF FOUND AND (CASE WHEN v_interval IS NULL THEN v_allocated >= v_credits
                       ELSE v_ends_at > now() AND v_allowance >= v_credits END) THEN
        RETURN NULL;
    END IF;

    FOR attempt IN 1..2 LOOP
        SELECT uc.allocated_credits, uc.total_credits, uc.period_ends_at, uc.period_allowance,
               uc.created_at
        INTO v_allocated, v_total, v_ends_at, v_allowance, v_anchor
        FROM public.user_credits uc WHERE uc.user_id = NEW.id
        FOR NO KEY UPDATE;
        EXIT WHEN FOUND;

        -- A renewing role's allowance expires with the first period (030).
        v_ends_at := (now() AT TIME ZONE 'UTC' + v_interval) AT TIME ZONE 'UTC';
        INSERT INTO public.user_credits
            (user_id, total_credits, allocated_credits, tracked_credits, period_ends_at,
             period_allowance)
        VALUES (NEW.id, v_credits, v_credits, CASE WHEN v_ends_at IS NULL THEN 0 ELSE v_credits END,
                v_ends_at, CASE WHEN v_ends_at IS NOT NULL THEN v_credits END)
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id INTO v_opened;
        IF v_opened IS NOT NULL THEN
            DELETE FROM public.credit_allocation_failures f WHERE f.user_id = NEW.id;
            IF v_credits > 0 THEN
                WITH logged AS (
                    INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
                    VALUES (NEW.id, v_credits, 'credit', 'backfill',
                            format('backfill allocation for role %s (account opened by a role change)',
                                   coalesce(quote_literal(NEW.role), 'NULL')))
                    RETURNING id
                )
                INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
                SELECT NEW.id, g.id, 'backfill', v_credits, v_ends_at FROM logged g;
            END IF;
            RETURN NULL;
        END IF;
        -- Opened meanwhile by a backfill or grant that has now committed: the
        -- next round locks that row and tops it up.
    END LOOP;
    IF v_total IS NULL THEN
        RETURN NULL;
    END IF;

    -- What the account holds for its current period: a one-time role's
    -- allocation lasts forever (allocated_credits); a renewing role's is the
    -- period's allowance. An account whose role starts renewing now enters
    -- its current period holding its one-time allocation; one whose period
    -- ended without a renewal yet gets the new role's allowance from the
    -- renewal, which is due.
    IF v_interval IS NULL THEN
        v_have := v_allocated;
        v_ends_at := NULL;
    ELSIF v_ends_at > now() THEN
        v_have := v_allowance;
    ELSIF v_ends_at IS NULL THEN
        v_have := v_allocated;
        SELECT p.ends_at INTO v_ends_at
        FROM credits_internal.allowance_period(v_anchor, v_interval, now()) p;
    ELSE
        RETURN NULL;
    END IF;

    v_topup := least(greatest(v_credits - v_have, 0), 2147483647 - v_total);
    IF v_topup < v_credits - v_have THEN
        RAISE WARNING 'credits-db: role change top-up for user % capped at % of % (total_credits limit 2147483647)',
            NEW.id, v_topup, v_credits - v_have;
    END IF;

    UPDATE public.user_credits
    SET total_credits = total_credits + v_topup,
        allocated_credits = allocated_credits + v_topup,
        tracked_credits = tracked_credits + CASE WHEN v_ends_at IS NULL THEN 0 ELSE v_topup END,
        period_ends_at = coalesce(v_ends_at, period_ends_at),
        period_allowance = CASE WHEN v_ends_at IS NULL THEN period_allowance
                                ELSE v_have + v_topup END,
        last_updated = now()
    WHERE user_id = NEW.id AND (v_topup > 0 OR v_ends_at IS DISTINCT FROM period_ends_at);
    IF v_topup <= 0 THEN
        RETURN NULL;
    END IF;

    WITH logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        VALUES (NEW.id, v_topup, 'credit', 'role_change',
                CASE WHEN v_topup = v_credits - v_have
                     THEN format('role changed to %s: allocation raised by %s',
                                 coalesce(quote_literal(NEW.role), 'NULL'), v_topup)
                     ELSE format('role changed to %s: allocation raised by %s, capped at %s (total_credits limit)',
                                 coalesce(quote_literal(NEW.role), 'NULL'), v_credits - v_have, v_topup)
                END)
        RETURNING id
    )
    INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
    SELECT NEW.id, g.id, 'role_change', v_topup, v_ends_at FROM logged g;
    RETURN NULL;
END
$$;

-- Like the signup trigger, creating it locks users against writes for an
-- instant (SHARE ROW EXCLUSIVE, no scan).
CREATE TRIGGER users_topup_credits_on_role_change
    AFTER UPDATE OF role ON users
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role)
    EXECUTE FUNCTION credits_internal.topup_on_role_change();

REVOKE EXECUTE ON FUNCTION credits_internal.topup_on_role_change() FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.topup_on_role_change() IS
    'Trigger: raise the account to the new role''s allocation when that exceeds the largest it was given (allocated_credits); open it if missing. Never lowers it.';
