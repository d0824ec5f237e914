-- credits-db 0011 down: back to 0010. Functions as the landed
-- revisions left them (written by scripts/new_revision.py). The renewal
-- columns, index and trigger go. The lots renewals wrote stay, as expiring
-- lots 0010 knows.
--
-- Refused (55000) while a role has a renewal_interval: that is the
-- operator's configuration, which this downgrade would drop. Set it to NULL
-- first (renewals stop; the current periods' lots still expire).

DO $credits_renewal_in_use$
BEGIN
    IF EXISTS (SELECT 1 FROM public.role_credits WHERE renewal_interval IS NOT NULL) THEN
        RAISE EXCEPTION 'credits-db: cannot downgrade below 0011: a role renews its allowance'
            USING ERRCODE = '55000',
                  DETAIL = 'Revision 0010 has no renewal: the renewal_interval of role_credits would be lost.',
                  HINT = 'UPDATE role_credits SET renewal_interval = NULL first, or stay at 0011.';
    END IF;
END
$credits_renewal_in_use$;

DROP TRIGGER role_credits_schedule_renewals ON role_credits;
DROP TRIGGER role_credits_schedule_renewals_of_new_roles ON role_credits;

-- ---- credits_internal.allocate_on_signup(): as revision 0010 defined it ----
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
        WITH planned AS MATERIALIZED (
            SELECT n.id AS user_id,
                   n.role,
                   coalesce(rc.credits, fallback.credits, 0) AS credits,
                   rc.role IS NULL AS is_fallback
            FROM new_users n
            LEFT JOIN public.role_credits rc ON rc.role = n.role
            LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
        ),
        allocated AS (
            INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
            SELECT user_id, credits, credits FROM planned
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
        -- Each allocation is an untracked lot (026).
        INSERT INTO public.credit_lots (user_id, log_id, source, amount)
        SELECT g.user_id, g.id, g.source, g.amount FROM logged g;
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

-- ---- credits_internal.backfill(boolean, integer, boolean, uuid): as revision 0010 defined it ----
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
    allocated AS (
        INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
        SELECT c.user_id, c.credits, c.credits FROM chosen c JOIN locked l ON l.id = c.user_id
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
    -- Each allocation is an untracked lot (026).
    lots AS (
        INSERT INTO public.credit_lots (user_id, log_id, source, amount)
        SELECT g.user_id, g.id, g.source, g.amount FROM logged g
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

COMMENT ON FUNCTION credits_internal.backfill(boolean, integer, boolean, uuid) IS
    'Internal: the allocation behind backfill_user_credits() and backfill_user_credits_batch().';

-- ---- grant_credits(uuid, integer, text, text, text, timestamp with time zone, integer): as revision 0010 defined it ----
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
    ELSIF p_source IN ('signup', 'backfill', 'role_change', 'refund') THEN
        RAISE EXCEPTION 'p_source % is reserved', quote_literal(p_source)
            USING ERRCODE = '22023',
                  HINT = 'signup, backfill and role_change are role allocations, refund is refund_credits().';
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

    WITH opened AS (
        INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
        SELECT c.user_id, c.credits, c.credits FROM public.credits_backfill_candidates c
        WHERE c.user_id = p_user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id, total_credits
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
    INSERT INTO public.credit_lots (user_id, log_id, source, amount)
    SELECT a.user_id, a.id, a.source, a.amount FROM allocated a;

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

COMMENT ON FUNCTION grant_credits(uuid, integer, text, text, text, timestamptz, integer) IS
    'Add p_amount to the account''s total_credits as a lot, expiring at p_expires_at (NULL: never), spent by p_priority (NULL: 50; lower first). CR006 if the total would exceed 2^31-1; keyed calls replay.';

-- ---- credits_internal.topup_on_role_change(): as revision 0010 defined it ----
CREATE OR REPLACE FUNCTION credits_internal.topup_on_role_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_credits   integer;
    v_allocated integer;
    v_total     integer;
    v_topup     integer;
    v_opened    uuid;
BEGIN
    SELECT coalesce(rc.credits, fallback.credits, 0) INTO v_credits
    FROM (SELECT) AS one
    LEFT JOIN public.role_credits rc ON rc.role = NEW.role
    LEFT JOIN public.role_credits fallback ON fallback.role = 'member';

    -- allocated_credits only ever grows: if what is visible covers the new
    -- role already, the locked row does too, and nothing needs a lock.
    SELECT uc.allocated_credits INTO v_allocated
    FROM public.user_credits uc WHERE uc.user_id = NEW.id;
    IF FOUND AND v_allocated >= v_credits THEN
        RETURN NULL;
    END IF;

    FOR attempt IN 1..2 LOOP
        SELECT uc.allocated_credits, uc.total_credits INTO v_allocated, v_total
        FROM public.user_credits uc WHERE uc.user_id = NEW.id
        FOR NO KEY UPDATE;
        EXIT WHEN FOUND;

        INSERT INTO public.user_credits (user_id, total_credits, allocated_credits)
        VALUES (NEW.id, v_credits, v_credits)
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
                INSERT INTO public.credit_lots (user_id, log_id, source, amount)
                SELECT NEW.id, g.id, 'backfill', v_credits FROM logged g;
            END IF;
            RETURN NULL;
        END IF;
        -- Opened meanwhile by a backfill or grant that has now committed: the
        -- next round locks that row and tops it up.
    END LOOP;
    IF v_total IS NULL THEN
        RETURN NULL;
    END IF;

    v_topup := least(greatest(v_credits - v_allocated, 0), 2147483647 - v_total);
    IF v_topup < v_credits - v_allocated THEN
        RAISE WARNING 'credits-db: role change top-up for user % capped at % of % (total_credits limit 2147483647)',
            NEW.id, v_topup, v_credits - v_allocated;
    END IF;
    IF v_topup <= 0 THEN
        RETURN NULL;
    END IF;

    UPDATE public.user_credits
    SET total_credits = total_credits + v_topup,
        allocated_credits = allocated_credits + v_topup,
        last_updated = now()
    WHERE user_id = NEW.id;

    WITH logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description)
        VALUES (NEW.id, v_topup, 'credit', 'role_change',
                CASE WHEN v_topup = v_credits - v_allocated
                     THEN format('role changed to %s: allocation raised by %s',
                                 coalesce(quote_literal(NEW.role), 'NULL'), v_topup)
                     ELSE format('role changed to %s: allocation raised by %s, capped at %s (total_credits limit)',
                                 coalesce(quote_literal(NEW.role), 'NULL'), v_credits - v_allocated, v_topup)
                END)
        RETURNING id
    )
    INSERT INTO public.credit_lots (user_id, log_id, source, amount)
    SELECT NEW.id, g.id, 'role_change', v_topup FROM logged g;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION credits_internal.topup_on_role_change() IS
    'Trigger: raise the account to the new role''s allocation when that exceeds the largest it was given (allocated_credits); open it if missing. Never lowers it.';

-- ---- expire_credits(timestamp with time zone, integer): as revision 0010 defined it ----
CREATE OR REPLACE FUNCTION expire_credits(
    p_as_of timestamptz DEFAULT now(),
    p_limit integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lots    bigint[];
    v_skipped integer;
    v_report  jsonb;
BEGIN
    IF p_as_of IS NULL THEN
        RAISE EXCEPTION 'p_as_of must be a time, not NULL' USING ERRCODE = '22004';
    ELSIF p_limit < 1 THEN
        RAISE EXCEPTION 'p_limit must be a positive number of lots or NULL, not %', p_limit
            USING ERRCODE = '22023';
    END IF;

    -- A busy account is skipped before the limit applies, so that a batch
    -- moves whenever a free account has a lot due. accounts_skipped counts the
    -- busy accounts among those of the first p_limit lots due.
    WITH taken AS MATERIALIZED (
        SELECT l.id, l.user_id
        FROM public.credit_lots l
        JOIN public.user_credits uc ON uc.user_id = l.user_id
        WHERE l.expires_at <= p_as_of AND l.taken < l.amount - l.expired
        ORDER BY l.expires_at, l.id
        LIMIT p_limit
        FOR NO KEY UPDATE OF uc SKIP LOCKED
    ), due AS (
        SELECT l.user_id
        FROM public.credit_lots l
        WHERE l.expires_at <= p_as_of AND l.taken < l.amount - l.expired
        ORDER BY l.expires_at, l.id
        LIMIT p_limit
    )
    SELECT coalesce((SELECT array_agg(t.id) FROM taken t), '{}'),
           (SELECT count(DISTINCT d.user_id) FROM due d
            WHERE d.user_id NOT IN (SELECT t.user_id FROM taken t))
    INTO v_lots, v_skipped;

    WITH due AS MATERIALIZED (
        SELECT l.id, l.user_id, l.amount - l.taken - l.expired AS credits, l.expires_at
        -- A join, not "= ANY (v_lots)": planned as a filter, a million-element
        -- array is searched once per row.
        FROM unnest(v_lots) AS chosen(id)
        JOIN public.credit_lots l ON l.id = chosen.id
        WHERE l.expires_at <= p_as_of AND l.taken < l.amount - l.expired
    ), lots AS (
        UPDATE public.credit_lots l SET expired = l.expired + d.credits
        FROM due d WHERE l.id = d.id
    ), per_account AS MATERIALIZED (
        SELECT d.user_id, sum(d.credits)::integer AS credits FROM due d GROUP BY d.user_id
    ), accounts AS (
        UPDATE public.user_credits uc
        SET used_credits = uc.used_credits + a.credits,
            tracked_credits = uc.tracked_credits - a.credits,
            last_updated = now()
        FROM per_account a WHERE uc.user_id = a.user_id
    ), logged AS (
        INSERT INTO public.credit_usage_log (user_id, amount, type, source, description, lot_id)
        SELECT d.user_id, -d.credits, 'expire', 'expiry',
               format('lot %s expired at %s', d.id, d.expires_at), d.id
        FROM due d
        ORDER BY d.expires_at, d.id
    )
    SELECT jsonb_build_object(
        'lots_expired', (SELECT count(*) FROM due),
        'credits_expired', (SELECT coalesce(sum(credits), 0) FROM due),
        'accounts', (SELECT count(*) FROM per_account),
        'accounts_skipped', v_skipped,
        'as_of', p_as_of)
    INTO v_report;
    RETURN v_report;
END
$$;

COMMENT ON FUNCTION expire_credits(timestamptz, integer) IS
    'Expire what lots lapsed by p_as_of still hold (one expire entry per lot), p_limit lots per call; accounts busy right now are skipped (accounts_skipped) for the next run. Idempotent.';

-- ---- get_credit_balance(uuid): as revision 0010 defined it ----
CREATE OR REPLACE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin'::name, 'MEMBER'::text)
       AND (p_user_id = credits_internal.current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not read the balance of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  HINT = 'A credits_user may read only its own balance (credits_current_user_id()).';
    END IF;

    SELECT jsonb_build_object(
        'user_id', u.id,
        'own', CASE WHEN own.user_id IS NULL THEN NULL
                    ELSE jsonb_build_object('total_credits', own.total_credits,
                                            'used_credits', own.used_credits,
                                            'remaining_credits', own.remaining_credits)
                         || own_lots.summary
               END,
        'team_admin_id', t.team_admin_id,
        'team_pool_remaining', pool.remaining_credits,
        'team_pool_spendable', (pool_lots.summary->>'spendable_credits')::integer,
        'team_pool_next_expiry', pool_lots.summary->'next_expiry',
        'spendable', coalesce(greatest((own_lots.summary->>'spendable_credits')::integer,
                                       (pool_lots.summary->>'spendable_credits')::integer), 0)
    )
    INTO v_result
    FROM public.users u
    LEFT JOIN public.user_credits own ON own.user_id = u.id
    LEFT JOIN public.team_credit_sharing t ON t.team_member_id = u.id
    LEFT JOIN public.user_credits pool ON pool.user_id = t.team_admin_id
    LEFT JOIN LATERAL (SELECT credits_internal.lot_summary(own.user_id) AS summary) own_lots
           ON own.user_id IS NOT NULL
    LEFT JOIN LATERAL (SELECT credits_internal.lot_summary(pool.user_id) AS summary) pool_lots
           ON pool.user_id IS NOT NULL
    WHERE u.id = p_user_id;

    IF v_result IS NULL THEN
        RAISE EXCEPTION 'unknown user %', coalesce(p_user_id::text, 'NULL') USING ERRCODE = 'CR005';
    END IF;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION get_credit_balance(uuid) IS
    'Own balance, team pool, spendable (the largest single debit accepted now) and the next expiry of one user; CR005 if unknown. Only credits_admin members may read another user''s balance (else 42501).';

-- ---- new in 0011: dropped ----
DROP FUNCTION renew_allowances(timestamp with time zone, integer);
DROP FUNCTION credits_internal.schedule_renewals();
DROP FUNCTION credits_internal.allowance_period(timestamp with time zone, interval, timestamp with time zone);

-- ---- DDL before the functions of the upgrade, undone ----
-- squawk-ignore ban-drop-column
ALTER TABLE credit_lots DROP COLUMN expired_unspent;
DROP INDEX user_credits_period_ends_idx;
-- squawk-ignore ban-drop-column
ALTER TABLE user_credits DROP COLUMN period_ends_at, DROP COLUMN period_allowance;
-- squawk-ignore ban-drop-column
ALTER TABLE role_credits DROP COLUMN renewal_interval, DROP COLUMN rollover_cap;
