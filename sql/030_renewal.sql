-- Allowances that renew by role. A role with a renewal_interval gives its
-- credits once per period instead of once: each allowance is a lot expiring
-- at the end of its period, and renew_allowances() (031) gives the next one.
-- NULL, the default of every seeded role, is the one-time allocation of
-- before: installing this changes nothing until an operator sets one.
-- rollover_cap is how much of an allowance still unspent at its period's end
-- carries into the next period (as a lot expiring with that period).
ALTER TABLE role_credits
    ADD COLUMN renewal_interval interval
        -- Months (and years), or a fixed length (days, hours), never both
        -- nor a negative part: then anchor + k x interval grows with k and the
        -- period of a time is found exactly (030). At most a century, so that
        -- no period end leaves the timestamp range.
        CONSTRAINT role_credits_renewal_interval_range CHECK (
            renewal_interval BETWEEN interval '1 hour' AND interval '100 years'
            AND extract(year FROM renewal_interval) >= 0
            AND extract(month FROM renewal_interval) >= 0
            AND extract(day FROM renewal_interval) >= 0
            AND extract(epoch FROM renewal_interval
                        - date_trunc('day', renewal_interval)) >= 0
            AND (date_trunc('month', renewal_interval) = interval '0'
                 OR date_trunc('month', renewal_interval) = renewal_interval)),
    ADD COLUMN rollover_cap integer NOT NULL DEFAULT 0
        CONSTRAINT role_credits_rollover_cap_nonnegative CHECK (rollover_cap >= 0);

COMMENT ON COLUMN role_credits.renewal_interval IS
    'NULL: the allocation is given once. Else it renews every interval, periods anchored on the account''s opening (user_credits.created_at), computed in UTC.';
COMMENT ON COLUMN role_credits.rollover_cap IS
    'At most this much of an allowance unspent at its period''s end carries into the next period.';

-- The account's current allowance period: when it ends (NULL: the account
-- does not renew) and what its role gave for it so far (the renewal plus any
-- role-change top-up), which a role change mid-period raises and never lowers.
ALTER TABLE user_credits
    ADD COLUMN period_ends_at timestamptz,
    ADD COLUMN period_allowance integer
        CONSTRAINT user_credits_period_allowance_nonnegative CHECK (period_allowance >= 0);

COMMENT ON COLUMN user_credits.period_ends_at IS
    'End of the current allowance period (its allowance lots expire then); NULL if the account''s role does not renew.';
COMMENT ON COLUMN user_credits.period_allowance IS
    'What the role gave for the current period: its renewal and any role-change top-up.';

-- The renewal finds the accounts whose period has ended in this order
-- (period_ends_at, user_id), so that a batch of p_limit walks the index and
-- stops: a sort cannot pass the row locks that come before the LIMIT.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX user_credits_period_ends_idx
    ON user_credits (period_ends_at, user_id)
    WHERE period_ends_at IS NOT NULL;

-- Of a lot's expired credits, those it still held when its expiry was swept
-- (the rest came back by refunds after it lapsed, and were spent at its end).
-- What a renewal may roll over is what was unspent at the period's end:
-- amount - taken - expired + expired_unspent, whether or not a sweep ran.
ALTER TABLE credit_lots
    ADD COLUMN expired_unspent integer NOT NULL DEFAULT 0
        CONSTRAINT credit_lots_expired_unspent_within_expired
        CHECK (expired_unspent >= 0 AND expired_unspent <= expired);

COMMENT ON COLUMN credit_lots.expired_unspent IS
    'Of expired: what the lot still held when its expiry was swept (not refunded back onto it afterwards).';

-- The allowance period containing p_at: [anchor + k x interval, anchor +
-- (k+1) x interval) for the largest k >= 0 whose start is not after p_at,
-- each boundary computed from the anchor (not from the previous boundary,
-- so an account opened on 31 January renews on 28 February, then 31 March)
-- and in UTC, so that no session's TimeZone moves a boundary.
--
-- Inlined into the calling statement (a set-returning SQL function that is
-- not STRICT and has no SET clause), so a renewal of a million accounts
-- computes it in its plan instead of calling a function per row. Its body is
-- BEGIN ATOMIC: every name in it is bound when it is created, which the
-- revision does with search_path = pg_catalog, so no object anyone creates
-- later (or had created in public) can take an operator's place.
CREATE FUNCTION credits_internal.allowance_period(
    p_anchor   timestamptz,
    p_interval interval,
    p_at       timestamptz
) RETURNS TABLE (starts_at timestamptz, ends_at timestamptz)
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
BEGIN ATOMIC
    SELECT (x.a + k.k * p_interval) AT TIME ZONE 'UTC',
           (x.a + (k.k + 1) * p_interval) AT TIME ZONE 'UTC'
    FROM (SELECT p_anchor AT TIME ZONE 'UTC' AS a, p_at AT TIME ZONE 'UTC' AS t,
                 (extract(year FROM p_interval) * 12 + extract(month FROM p_interval))::bigint
                     AS months) x
    CROSS JOIN LATERAL (
        -- k exactly: by calendar months for an interval of months (the start
        -- of period k0 is then in p_at's month or the one before), else by its
        -- fixed length (in UTC a day is always 24 hours).
        SELECT CASE WHEN x.months > 0
                    THEN floor(((extract(year FROM x.t) - extract(year FROM x.a)) * 12
                                + extract(month FROM x.t) - extract(month FROM x.a))
                               / x.months)::bigint
                    ELSE floor(extract(epoch FROM x.t - x.a) / extract(epoch FROM p_interval))::bigint
               END AS k0
    ) e
    CROSS JOIN LATERAL (
        SELECT greatest(e.k0 - (x.a + e.k0 * p_interval > x.t)::integer, 0) AS k
    ) k;
END;

REVOKE EXECUTE ON FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz)
    FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.allowance_period(timestamptz, interval, timestamptz) IS
    'Internal: the allowance period [starts_at, ends_at) containing p_at, anchored on p_anchor, in UTC.';

-- An operator who gives a role a renewal_interval starts its accounts'
-- renewals: each account's current period (from its opening) is recorded,
-- and its first renewal comes at that period's end. What the account already
-- holds (its one-time allocation) stays: a change of role_credits never
-- takes credits back. Removing the interval stops the renewals (the
-- renewal skips accounts whose role no longer renews); the current period's
-- lots still expire at its end.
--
-- Accounts opened or moved into the role beside this change: every opener
-- (signup, backfill, a grant opening an account, a role change) first locks
-- the role_credits row it reads FOR SHARE, which the UPDATE's row lock
-- conflicts with. So either the opener waits for this change to commit and
-- reads the interval, or this UPDATE waits for the opener to commit and the
-- planning statement below, with a snapshot of its own, sees its account.
-- That needs READ COMMITTED: at a snapshot level the statement would see only
-- what committed before the transaction began (CR014, nothing changed). A
-- role INSERTed with an interval has no row its users' openers locked (they
-- read the member fallback): for that rarer change the tables are locked
-- instead, until the operator's transaction ends.
CREATE FUNCTION credits_internal.schedule_renewals() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_roles     text[];
    v_intervals interval[];
BEGIN
    -- old_roles exists for an UPDATE only (a statement is planned when it
    -- first runs, so the INSERT branch never names it).
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n.role), array_agg(n.renewal_interval) INTO v_roles, v_intervals
        FROM new_roles n
        WHERE n.renewal_interval IS NOT NULL;
    ELSE
        SELECT array_agg(n.role), array_agg(n.renewal_interval) INTO v_roles, v_intervals
        FROM new_roles n
        JOIN old_roles o ON o.role = n.role
        WHERE o.renewal_interval IS NULL AND n.renewal_interval IS NOT NULL;
    END IF;
    IF v_roles IS NULL THEN
        RETURN NULL;
    END IF;

    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a role may start renewing only at READ COMMITTED, not %',
            upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'CR014',
                  DETAIL = format('roles starting to renew: %s', array_to_string(v_roles, ', ')),
                  HINT = 'At a snapshot isolation level the accounts opened beside this change '
                         'could not be scheduled; run it in a READ COMMITTED transaction.';
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- SHARE ROW EXCLUSIVE waits for every writer of users and balances in
        -- flight and holds new ones until this commits; it conflicts with
        -- itself, so two such changes cannot deadlock on user_credits.
        LOCK TABLE public.users, public.user_credits IN SHARE ROW EXCLUSIVE MODE;
    END IF;

    WITH started AS (
        SELECT s.role, s.renewal_interval
        FROM unnest(v_roles, v_intervals) AS s(role, renewal_interval)
    ), planned AS (
        SELECT uc.user_id, p.ends_at
        FROM public.user_credits uc
        JOIN public.users u ON u.id = uc.user_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        JOIN started s ON s.role = coalesce(rc.role, 'member')
        CROSS JOIN LATERAL credits_internal.allowance_period(uc.created_at, s.renewal_interval,
                                                             now()) p
        WHERE uc.period_ends_at IS NULL
    )
    UPDATE public.user_credits uc
    SET period_ends_at = p.ends_at,
        period_allowance = coalesce(uc.period_allowance, uc.allocated_credits)
    FROM planned p
    WHERE uc.user_id = p.user_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER role_credits_schedule_renewals
    AFTER UPDATE ON role_credits
    REFERENCING OLD TABLE AS old_roles NEW TABLE AS new_roles
    FOR EACH STATEMENT EXECUTE FUNCTION credits_internal.schedule_renewals();

-- A role added with an interval: its users' accounts, opened on the member
-- fallback, renew from their current period's end with the new role.
CREATE TRIGGER role_credits_schedule_renewals_of_new_roles
    AFTER INSERT ON role_credits
    REFERENCING NEW TABLE AS new_roles
    FOR EACH STATEMENT EXECUTE FUNCTION credits_internal.schedule_renewals();

REVOKE EXECUTE ON FUNCTION credits_internal.schedule_renewals() FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.schedule_renewals() IS
    'Trigger: when a role starts renewing, record each of its accounts'' current period so that it renews at that period''s end.';
