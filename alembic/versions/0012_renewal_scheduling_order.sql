-- credits-db 0012: Openers lock the role rows they read; a role starts renewing at READ COMMITTED only (frozen; see sql/ for current
-- definitions).
-- Orders an operator starting a role's renewals with the accounts opened
-- beside it (found by the interleaving matrix: both commit, the account has
-- no period and never renews). Every opener (signup, backfill, a grant
-- opening an account, a role change) locks the role_credits rows it reads
-- FOR SHARE first (credits_internal.lock_allocation_roles, new), which the
-- operator's UPDATE conflicts with; schedule_renewals raises CR014 at
-- REPEATABLE READ and SERIALIZABLE, where its planning statement could not
-- see accounts committed after the snapshot, and keeps the table lock only
-- for a role INSERTed with an interval (no row the openers locked), so the
-- debits of other roles' accounts no longer wait for an operator's UPDATE.
-- Privileges and comments as before.

-- ---- 007_signup_allocation.sql ----
CREATE OR REPLACE FUNCTION credits_internal.allocate_on_signup() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sqlstate text;
    v_message  text;
    v_detail   text;
BEGIN
    BEGIN
        -- Ordered with a role that starts renewing meanwhile (032, 030).
        PERFORM credits_internal.lock_allocation_roles(ARRAY(SELECT DISTINCT n.role
                                                             FROM new_users n));
        WITH planned AS MATERIALIZED (
            SELECT n.id AS user_id,
                   n.role,
                   coalesce(rc.credits, fallback.credits, 0) AS credits,
                   rc.role IS NULL AS is_fallback,
                   -- A renewing role's allowance expires with the account's first
                   -- period (030), which starts now.
                   (now() AT TIME ZONE 'UTC'
                    + CASE WHEN rc.role IS NULL THEN fallback.renewal_interval
                           ELSE rc.renewal_interval END) AT TIME ZONE 'UTC' AS period_ends_at
            FROM new_users n
            LEFT JOIN public.role_credits rc ON rc.role = n.role
            LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        ),
        allocated AS (
            INSERT INTO public.user_credits
                (user_id, total_credits, allocated_credits, tracked_credits, period_ends_at,
                 period_allowance)
            SELECT user_id, credits, credits,
                   CASE WHEN period_ends_at IS NOT NULL THEN credits ELSE 0 END,
                   period_ends_at, CASE WHEN period_ends_at IS NOT NULL THEN credits END
            FROM planned
            ON CONFLICT (user_id) DO NOTHING
            RETURNING user_id
        ),
        logged AS (
            INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
            SELECT p.user_id, p.credits, 'credit', 'signup',
                   CASE
                       WHEN NOT p.is_fallback THEN 'signup allocation for role ' || p.role
                       WHEN p.role IS NULL THEN 'signup allocation: no role, member allocation (fallback)'
                       ELSE format('signup allocation: unknown role %L, member allocation (fallback)', p.role)
                   END
            FROM planned p
            JOIN allocated a USING (user_id)
            -- A zero allocation (a role configured with 0 credits) has nothing to log:
            -- the balance row alone keeps remaining_credits = sum(amount) = 0.
            WHERE p.credits > 0
            RETURNING id, user_id, amount, source
        )
        -- Each allocation is a lot (026), expiring with the period if the role renews.
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
        SELECT g.user_id, g.id, g.source, g.amount, p.period_ends_at
        FROM logged g JOIN planned p USING (user_id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        RAISE WARNING 'credits-db: signup allocation failed (%: %); the users were created without credits and the next backfill_user_credits() will allocate them',
            v_sqlstate, v_message;
        BEGIN
            INSERT INTO public.credit_allocation_failures AS f (user_id, sqlstate, message, detail)
            SELECT n.id, v_sqlstate, v_message, nullif(v_detail, '') FROM new_users n
            ON CONFLICT (user_id) DO UPDATE
                SET failed_at = now(), sqlstate = EXCLUDED.sqlstate,
                    message = EXCLUDED.message, detail = EXCLUDED.detail;
        EXCEPTION WHEN OTHERS THEN
            -- Whatever broke the allocation may break this too: the signup still stands.
            RAISE WARNING 'credits-db: the signup allocation failure could not be recorded (%: %)',
                SQLSTATE, SQLERRM;
        END;
    END;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.allocate_on_signup() FROM PUBLIC;

-- ---- 008_backfill.sql ----
CREATE OR REPLACE FUNCTION credits_internal.backfill(
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

-- ---- 016_grant_credits.sql ----
CREATE OR REPLACE FUNCTION grant_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'admin_grant',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_expires_at      timestamptz DEFAULT NULL,
    p_priority        integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_log_id    bigint;
    v_remaining integer;
    v_total     integer;
    v_earlier   bigint;
    v_earlier_remaining integer;
    v_key_taken boolean;
    v_entry     public.credit_usage_log;
    v_lot_expires_at timestamptz;
    v_lot_priority   integer;
    v_priority  integer := coalesce(p_priority, 50);
    v_tracked   boolean := p_expires_at IS NOT NULL OR coalesce(p_priority, 50) <> 50;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a grant must be a positive integer',
            coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
    ELSIF p_source IS NULL OR p_source = '' THEN
        RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
    ELSIF p_source IN ('signup', 'backfill', 'role_change', 'renewal', 'rollover', 'refund',
                       'expiry', 'opening_balance') THEN
        RAISE EXCEPTION 'p_source % is reserved', quote_literal(p_source)
            USING ERRCODE = '22023',
                  HINT = 'signup, backfill, role_change, renewal and rollover are role allocations, refund is refund_credits(), expiry expire_credits(), opening_balance the lots of revision 0010.';
    ELSIF p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        -- A longer key might not fit the key's index (54000): refuse it by name.
        RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
            USING ERRCODE = '22023';
    ELSIF p_priority NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'p_priority must be NULL (50) or 0 to 100, not %', p_priority
            USING ERRCODE = '22023', HINT = 'Lots with a lower number are spent first.';
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.grant:' || p_user_id::text || ':' || p_idempotency_key, 0::bigint));

        SELECT k.log_id, k.remaining_credits INTO v_earlier, v_earlier_remaining
        FROM public.credit_idempotency_keys k
        WHERE k.owner_user_id = p_user_id AND k.operation = 'grant'
          AND k.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            SELECT * INTO v_entry FROM public.credit_usage_log l WHERE l.id = v_earlier;
            -- A grant made before lots existed has none: it had no expiry.
            SELECT l.expires_at, l.priority INTO v_lot_expires_at, v_lot_priority
            FROM public.credit_lots l
            WHERE l.user_id = p_user_id AND l.log_id = v_earlier;
            IF v_entry.amount <> p_amount OR v_entry.source <> p_source
               OR v_lot_expires_at IS DISTINCT FROM p_expires_at
               OR coalesce(v_lot_priority, 50) <> v_priority THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s, expires %s, priority %s; this call: credit of %s, source %s, expires %s, priority %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, coalesce(v_lot_expires_at::text, 'never'),
                                          coalesce(v_lot_priority, 50), p_amount, p_source,
                                          coalesce(p_expires_at::text, 'never'), v_priority);
            END IF;
            RETURN credits_internal.replayed_result(v_entry, v_earlier_remaining);
        END IF;
    END IF;

    -- After the replay, so that a retry of a grant whose expiry has passed
    -- since still replays.
    IF p_expires_at <= statement_timestamp() OR p_expires_at = 'infinity' THEN
        RAISE EXCEPTION 'p_expires_at % is not a time in the future', p_expires_at
            USING ERRCODE = '22023',
                  HINT = 'Expired credits could never be spent; NULL never expires.';
    END IF;

    -- Checked up front because the upsert would report it as a foreign-key
    -- violation (23503), which callers cannot tell from other failures.
    PERFORM 1 FROM public.users u WHERE u.id = p_user_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    -- Opening the account: ordered with a role that starts renewing
    -- meanwhile (032, 030). An open account needs no role.
    IF NOT EXISTS (SELECT 1 FROM public.user_credits uc WHERE uc.user_id = p_user_id) THEN
        PERFORM credits_internal.lock_allocation_roles(
            ARRAY(SELECT u.role FROM public.users u WHERE u.id = p_user_id));
    END IF;

    WITH opened AS (
        INSERT INTO public.user_credits
            (user_id, total_credits, allocated_credits, tracked_credits, period_ends_at,
             period_allowance)
        SELECT c.user_id, c.credits, c.credits,
               CASE WHEN n.ends_at IS NOT NULL THEN c.credits ELSE 0 END,
               n.ends_at, CASE WHEN n.ends_at IS NOT NULL THEN c.credits END
        FROM public.credits_backfill_candidates c
        LEFT JOIN public.role_credits rc ON rc.role = c.role
        JOIN public.role_credits r ON r.role = coalesce(rc.role, 'member')
        -- A renewing role's allowance expires with the first period (030).
        CROSS JOIN LATERAL (SELECT (now() AT TIME ZONE 'UTC' + r.renewal_interval)
                                   AT TIME ZONE 'UTC' AS ends_at) n
        WHERE c.user_id = p_user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id, total_credits, period_ends_at
    ),
    cleared AS (
        DELETE FROM public.credit_allocation_failures f
        USING opened o WHERE f.user_id = o.user_id
    ),
    allocated AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        SELECT o.user_id, o.total_credits, 'credit', 'backfill',
               'backfill allocation (account opened by a grant)'
        FROM opened o
        WHERE o.total_credits > 0
        RETURNING id, user_id, amount, source
    )
    INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at)
    SELECT a.user_id, a.id, a.source, a.amount, o.period_ends_at
    FROM allocated a JOIN opened o USING (user_id);

    INSERT INTO public.user_credits AS uc (user_id, total_credits, tracked_credits)
    VALUES (p_user_id, p_amount, CASE WHEN v_tracked THEN p_amount ELSE 0 END)
    ON CONFLICT (user_id) DO UPDATE
        SET total_credits = uc.total_credits + EXCLUDED.total_credits,
            tracked_credits = uc.tracked_credits + EXCLUDED.tracked_credits,
            last_updated = now()
        WHERE uc.total_credits <= 2147483647 - EXCLUDED.total_credits
    RETURNING uc.remaining_credits INTO v_remaining;

    IF NOT FOUND THEN
        -- The upsert locked the row even though its WHERE refused it.
        SELECT uc.total_credits INTO v_total FROM public.user_credits uc WHERE uc.user_id = p_user_id;
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', p_amount
            USING ERRCODE = 'CR006',
                  DETAIL = format('total_credits is %s; at most %s more can be granted',
                                  v_total, 2147483647 - v_total);
    END IF;

    WITH logged AS (
        INSERT INTO public.credit_usage_log
            (user_id, amount, type, source, description, idempotency_key)
        VALUES (p_user_id, p_amount, 'credit', p_source, p_description, p_idempotency_key)
        RETURNING id
    ), lot AS (
        INSERT INTO public.credit_lots (user_id, log_id, source, amount, expires_at, priority)
        SELECT p_user_id, logged.id, p_source, p_amount, p_expires_at, v_priority FROM logged
    ), keyed AS (
        INSERT INTO public.credit_idempotency_keys
            (owner_user_id, operation, idempotency_key, log_id, remaining_credits)
        SELECT p_user_id, 'grant', p_idempotency_key, logged.id, v_remaining FROM logged
        WHERE p_idempotency_key IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING log_id
    )
    SELECT logged.id, p_idempotency_key IS NOT NULL AND NOT EXISTS (SELECT FROM keyed)
    INTO v_log_id, v_key_taken
    FROM logged;
    IF v_key_taken THEN
        -- Taken since the replay check, which the lock above rules out.
        RAISE EXCEPTION 'idempotency key % was taken by a concurrent call', p_idempotency_key
            USING ERRCODE = '40001', HINT = 'Retry the call: it will replay.';
    END IF;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
        'amount', p_amount, 'remaining_credits', v_remaining,
        'from_team_pool', false, 'replayed', false);
END
$$;

REVOKE EXECUTE ON FUNCTION grant_credits(uuid, integer, text, text, text, timestamptz, integer)
    FROM PUBLIC;

COMMENT ON FUNCTION grant_credits(uuid, integer, text, text, text, timestamptz, integer) IS
    'Add p_amount to the account''s total_credits as a lot, expiring at p_expires_at (NULL: never), spent by p_priority (NULL: 50; lower first). CR006 if the total would exceed 2^31-1; keyed calls replay.';

-- ---- 019_role_change_topup.sql ----
CREATE OR REPLACE FUNCTION credits_internal.topup_on_role_change() RETURNS trigger
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

REVOKE EXECUTE ON FUNCTION credits_internal.topup_on_role_change() FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.topup_on_role_change() IS
    'Trigger: raise the account to the new role''s allocation when that exceeds the largest it was given (allocated_credits); open it if missing. Never lowers it.';

-- ---- 030_renewal.sql ----
CREATE OR REPLACE FUNCTION credits_internal.schedule_renewals() RETURNS trigger
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

REVOKE EXECUTE ON FUNCTION credits_internal.schedule_renewals() FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.schedule_renewals() IS
    'Trigger: when a role starts renewing, record each of its accounts'' current period so that it renews at that period''s end.';

-- ---- 032_allocation_role_locks.sql ----
CREATE OR REPLACE FUNCTION credits_internal.lock_allocation_roles(p_roles text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1
    FROM public.role_credits r
    WHERE p_roles IS NULL
       OR r.role IN (SELECT coalesce(rc.role, 'member')
                     FROM unnest(p_roles) AS x(role)
                     LEFT JOIN public.role_credits rc ON rc.role = x.role)
    ORDER BY r.role
    FOR SHARE OF r;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_internal.lock_allocation_roles(text[]) FROM PUBLIC;

COMMENT ON FUNCTION credits_internal.lock_allocation_roles(text[]) IS
    'Internal: lock FOR SHARE the role_credits rows an allocation to these roles reads (all when NULL), in role order.';

-- Supabase: taken back from the API roles, as 094 does.
DO $credits_role_locks_api_roles$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT rolname FROM pg_catalog.pg_roles
        WHERE rolname IN ('anon', 'authenticated', 'service_role')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION credits_internal.lock_allocation_roles(text[])'
                       ' FROM %I', v_role);
    END LOOP;
END
$credits_role_locks_api_roles$;
