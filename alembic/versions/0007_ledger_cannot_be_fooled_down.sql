-- credits-db 0007 down: back to 0006. The functions return to their 0006
-- bodies; the key table, its trigger and the two account columns go (they
-- hold only what this revision derived). The log's key indexes return: they
-- need every key unique per account, which keys scoped to their caller no
-- longer guarantee (an admin and a member of their pool may both have used a
-- key on the admin's account), so such a database refuses this downgrade
-- with a message naming the keys rather than losing any.
DO $credits_downgrade_keys$
DECLARE
    v_clashes text;
BEGIN
    SELECT string_agg(format('%s on account %s', quote_literal(idempotency_key), user_id), ', ')
    INTO v_clashes
    FROM (SELECT l.user_id, l.idempotency_key FROM credit_usage_log l
          WHERE l.idempotency_key IS NOT NULL
          GROUP BY l.user_id, l.idempotency_key HAVING count(*) > 1
          LIMIT 10) AS clash;
    IF v_clashes IS NOT NULL THEN
        RAISE EXCEPTION 'credits-db cannot downgrade below 0007: idempotency keys used twice on one account: %',
            v_clashes
            USING ERRCODE = '23505',
                  HINT = 'Revision 0006 allows a key once per account; keys since 0007 are per caller.';
    END IF;
END
$credits_downgrade_keys$;

-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX credit_usage_log_idempotency_key_idx
    ON credit_usage_log (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_actor_idempotency_key_idx
    ON credit_usage_log (actor_user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND actor_user_id IS NOT NULL;

-- ---- 006_append_only_log.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credits_refuse_log_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'credit_usage_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'CR010',
              HINT = 'Correct an entry with a new one (a refund or a grant).';
END
$$;

REVOKE EXECUTE ON FUNCTION credits_refuse_log_change() FROM PUBLIC;

-- ---- 007_signup_allocation.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credits_allocate_on_signup() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
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
            INSERT INTO public.user_credits (user_id, total_credits)
            SELECT user_id, credits FROM planned
            ON CONFLICT (user_id) DO NOTHING
            RETURNING user_id
        )
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
        WHERE p.credits > 0;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'credits-db: signup allocation failed (%: %); the users were created without credits and the next backfill_user_credits() will allocate them',
            SQLSTATE, SQLERRM;
    END;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_allocate_on_signup() FROM PUBLIC;

-- ---- 008_backfill.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credits_backfill(
    p_dry_run       boolean,
    p_limit         integer,
    p_keyset        boolean,
    p_after_user_id uuid
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
        SELECT count(*) AS users_total FROM users
    ),
    user_window AS MATERIALIZED (
        -- Two branches, so that the cursor is an index condition: an OR with
        -- "p_after_user_id IS NULL" would make every batch read the index
        -- from its start.
        (SELECT u.id FROM users u
         WHERE p_keyset AND p_after_user_id IS NULL
         ORDER BY u.id
         LIMIT p_limit)
        UNION ALL
        (SELECT u.id FROM users u
         WHERE p_keyset AND u.id > p_after_user_id
         ORDER BY u.id
         LIMIT p_limit)
    ),
    chosen AS MATERIALIZED (
        (SELECT c.user_id, c.role, c.credits, c.is_fallback
         FROM credits_backfill_candidates c
         WHERE NOT p_keyset
         LIMIT p_limit)
        UNION ALL
        -- LIMIT 1 keeps each lookup a probe by primary key, one per user of the
        -- window, whatever the statistics of user_credits say.
        SELECT c.user_id, c.role, c.credits, c.is_fallback
        FROM user_window w
        CROSS JOIN LATERAL (
            SELECT * FROM credits_backfill_candidates c WHERE c.user_id = w.id LIMIT 1
        ) c
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
        'users_backfilled', coalesce(sum(users), 0),
        'credits_allocated', coalesce(sum(credits), 0),
        'fallback_role_users', coalesce(sum(fallback_users), 0),
        'by_role', coalesce(jsonb_object_agg(coalesce(role, '(null)'),
                            jsonb_build_object('users', users, 'credits', credits)), '{}'),
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
                                               - (SELECT count(*) FROM user_credits)
                                     END)
    END
    INTO v_report
    FROM per_role;
    RETURN v_report;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_backfill(boolean, integer, boolean, uuid) FROM PUBLIC;

COMMENT ON FUNCTION credits_backfill(boolean, integer, boolean, uuid) IS
    'Internal: the allocation behind backfill_user_credits() and backfill_user_credits_batch().';

CREATE OR REPLACE FUNCTION backfill_user_credits(
    p_dry_run boolean DEFAULT false,
    p_limit   integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT credits_backfill(p_dry_run, p_limit, false, NULL);
$$;

REVOKE EXECUTE ON FUNCTION backfill_user_credits(boolean, integer) FROM PUBLIC;

COMMENT ON FUNCTION backfill_user_credits(boolean, integer) IS
    'Allocate credits by role to every user without a balance row (source backfill). Idempotent; p_limit batches, p_dry_run reports without writing.';

CREATE OR REPLACE FUNCTION backfill_user_credits_batch(
    p_after_user_id uuid DEFAULT NULL,
    p_limit         integer DEFAULT 50000
) RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT credits_backfill(false, p_limit, true, p_after_user_id);
$$;

REVOKE EXECUTE ON FUNCTION backfill_user_credits_batch(uuid, integer) FROM PUBLIC;

COMMENT ON FUNCTION backfill_user_credits_batch(uuid, integer) IS
    'Backfill the next p_limit users after p_after_user_id in primary-key order; returns last_user_id for the next call (NULL when done).';

-- ---- 009_allocation_report.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credit_allocation_report() RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH per_user AS (
        SELECT u.role, uc.user_id IS NOT NULL AS has_credits,
               coalesce(uc.total_credits, 0) AS total_credits,
               coalesce(uc.remaining_credits, 0) AS remaining_credits
        FROM users u
        LEFT JOIN user_credits uc ON uc.user_id = u.id
    ),
    per_role AS (
        SELECT coalesce(role, '(null)') AS role_key,
               count(*) AS users,
               count(*) FILTER (WHERE has_credits) AS users_with_credits,
               sum(total_credits) AS total_credits,
               sum(remaining_credits) AS remaining_credits
        FROM per_user
        GROUP BY role
    )
    SELECT jsonb_build_object(
        'users_total', (SELECT count(*) FROM per_user),
        'users_with_credits', (SELECT count(*) FROM per_user WHERE has_credits),
        'users_without_credits', (SELECT count(*) FROM per_user WHERE NOT has_credits),
        'by_role', (SELECT coalesce(jsonb_object_agg(role_key, jsonb_build_object(
                        'users', users,
                        'users_with_credits', users_with_credits,
                        'total_credits', total_credits,
                        'remaining_credits', remaining_credits)), '{}')
                    FROM per_role)
    );
$$;

REVOKE EXECUTE ON FUNCTION credit_allocation_report() FROM PUBLIC;

COMMENT ON FUNCTION credit_allocation_report() IS
    'Users with and without a balance, and credits held per role (the post-backfill verification report).';

-- ---- 012_replayed_result.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credits_replayed_result(p_entry credit_usage_log) RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT jsonb_build_object(
        'log_id', p_entry.id,
        'account_user_id', p_entry.user_id,
        'actor_user_id', p_entry.actor_user_id,
        'amount', abs(p_entry.amount),
        'remaining_credits', (SELECT sum(l.amount) FROM credit_usage_log l
                              WHERE l.user_id = p_entry.user_id AND l.id <= p_entry.id),
        'from_team_pool', p_entry.actor_user_id IS NOT NULL,
        'replayed', true
    );
$$;

REVOKE EXECUTE ON FUNCTION credits_replayed_result(credit_usage_log) FROM PUBLIC;

COMMENT ON FUNCTION credits_replayed_result(credit_usage_log) IS
    'Internal: the result a keyed debit or grant returned originally, rebuilt from its log entry (replayed = true).';

-- ---- 013_add_team_member.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION add_team_member(p_team_admin_id uuid, p_team_member_id uuid) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_admin_role   text;
    v_limit        integer;
    v_current      uuid;
    v_members      bigint;
    v_inserted     bigint;
BEGIN
    IF p_team_admin_id IS NULL OR p_team_member_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: team admin and member ids must not be NULL'
            USING ERRCODE = 'CR005',
                  DETAIL = format('team_admin_id=%s, team_member_id=%s',
                                  coalesce(p_team_admin_id::text, 'NULL'),
                                  coalesce(p_team_member_id::text, 'NULL'));
    END IF;

    IF p_team_admin_id = p_team_member_id THEN
        RAISE EXCEPTION 'a user cannot join their own team'
            USING ERRCODE = 'CR009', DETAIL = format('user %s', p_team_admin_id);
    END IF;

    SELECT u.role INTO v_admin_role
    FROM users u WHERE u.id = p_team_admin_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_team_admin_id
            USING ERRCODE = 'CR005', DETAIL = 'the team admin does not exist';
    END IF;

    PERFORM 1 FROM users u WHERE u.id = p_team_member_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_team_member_id
            USING ERRCODE = 'CR005', DETAIL = 'the team member does not exist';
    END IF;

    SELECT coalesce(rc.team_member_limit, fallback.team_member_limit, 0) INTO v_limit
    FROM (SELECT 1) AS one
    LEFT JOIN role_credits rc ON rc.role = v_admin_role
    LEFT JOIN role_credits fallback ON fallback.role = 'member';
    IF v_limit <= 0 THEN
        RAISE EXCEPTION 'user % is not a team admin', p_team_admin_id
            USING ERRCODE = 'CR003',
                  DETAIL = format('role %s allows no team members',
                                  coalesce(quote_literal(v_admin_role), 'NULL'));
    END IF;

    SELECT t.team_admin_id INTO v_current
    FROM team_credit_sharing t WHERE t.team_member_id = p_team_member_id;
    IF FOUND THEN
        IF v_current = p_team_admin_id THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'user % is already a member of another team', p_team_member_id
            USING ERRCODE = 'CR004', DETAIL = format('team admin %s', v_current);
    END IF;

    SELECT count(*) INTO v_members
    FROM team_credit_sharing t WHERE t.team_admin_id = p_team_admin_id;
    IF v_members >= v_limit THEN
        RAISE EXCEPTION 'team of % is full', p_team_admin_id
            USING ERRCODE = 'CR002',
                  DETAIL = format('%s of %s members', v_members, v_limit);
    END IF;

    -- The member may have joined another pool after step 6 looked (that add
    -- locked a different admin); the unique member constraint decides, and the
    -- loser gets CR004 rather than a unique violation.
    INSERT INTO team_credit_sharing (team_admin_id, team_member_id)
    VALUES (p_team_admin_id, p_team_member_id)
    ON CONFLICT ON CONSTRAINT team_credit_sharing_member_unique DO NOTHING
    RETURNING id INTO v_inserted;
    IF v_inserted IS NULL THEN
        SELECT t.team_admin_id INTO v_current
        FROM team_credit_sharing t WHERE t.team_member_id = p_team_member_id;
        RAISE EXCEPTION 'user % is already a member of another team', p_team_member_id
            USING ERRCODE = 'CR004', DETAIL = format('team admin %s', v_current);
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION add_team_member(uuid, uuid) FROM PUBLIC;

COMMENT ON FUNCTION add_team_member(uuid, uuid) IS
    'Let p_team_member_id spend from p_team_admin_id''s balance. No-op if already so; CR002 full, CR003 not a team admin, CR004 in another team, CR005 unknown user, CR009 self.';

-- ---- 014_remove_team_member.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION remove_team_member(p_team_admin_id uuid, p_team_member_id uuid) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF p_team_admin_id IS NULL OR p_team_member_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: team admin and member ids must not be NULL'
            USING ERRCODE = 'CR005',
                  DETAIL = format('team_admin_id=%s, team_member_id=%s',
                                  coalesce(p_team_admin_id::text, 'NULL'),
                                  coalesce(p_team_member_id::text, 'NULL'));
    END IF;

    DELETE FROM team_credit_sharing t
    WHERE t.team_admin_id = p_team_admin_id AND t.team_member_id = p_team_member_id;
    RETURN FOUND;
END
$$;

REVOKE EXECUTE ON FUNCTION remove_team_member(uuid, uuid) FROM PUBLIC;

COMMENT ON FUNCTION remove_team_member(uuid, uuid) IS
    'End a team membership; true if it existed. The member keeps their own balance.';

-- ---- 015_debit_credits.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION debit_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'usage',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_earlier   bigint;
    v_remaining integer;
    v_admin     uuid;
    v_entry     credit_usage_log;
    v_own       integer;
    v_pool      integer;
    v_result    jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin', 'MEMBER')
       AND (p_user_id = credits_current_user_id()) IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied: may not spend the credits of user %',
            coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = '42501',
                  DETAIL = format('caller %s is user %s and not a member of credits_admin',
                                  coalesce(nullif(current_setting('role'), 'none'), session_user),
                                  coalesce(credits_current_user_id()::text, 'NULL')),
                  HINT = 'A credits_user may debit only its own account (credits_current_user_id()).';
    END IF;

    -- The hot path: one statement. Its WHERE also refuses invalid arguments (a
    -- NULL matches nothing), so they cost nothing here and are named below.
    -- p_amount > 0 also keeps -p_amount (folded when the statement is planned)
    -- from overflowing for -2^31: that amount is named as CR006 below.
    IF p_idempotency_key IS NULL AND p_amount > 0 THEN
        WITH debited AS (
            UPDATE user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount
              AND p_amount > 0 AND p_source <> ''
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO credit_usage_log (user_id, amount, type, source, description)
            SELECT p_user_id, -p_amount, 'debit', p_source, p_description FROM debited
            RETURNING id
        )
        SELECT jsonb_build_object(
                   'log_id', logged.id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                   'amount', p_amount, 'remaining_credits', debited.remaining_credits,
                   'from_team_pool', false, 'replayed', false)
        INTO v_result
        FROM logged, debited;

        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;
    END IF;

    -- One condition on the way to the keyed and pool paths: PL/pgSQL compiles
    -- each condition it evaluates once per transaction, so four tests in a row
    -- cost four compilations on every call. Which argument is bad is worked out
    -- only when one is.
    IF p_user_id IS NULL OR p_amount IS NULL OR p_amount <= 0 OR p_source IS NULL
       OR p_source = '' OR p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        IF p_user_id IS NULL THEN
            RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
        ELSIF p_amount IS NULL OR p_amount <= 0 THEN
            RAISE EXCEPTION 'invalid amount %: a debit must be a positive integer',
                coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
        ELSIF p_source IS NULL OR p_source = '' THEN
            RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
        ELSE
            -- A longer key might not fit the unique index (54000): refuse it by name.
            RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
                USING ERRCODE = '22023';
        END IF;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        -- Every statement below starts after the lock is granted, so it sees
        -- the entry of any earlier call with this key that committed.
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.idempotency:' || p_user_id::text || ':' || p_idempotency_key, 0));

        -- One statement: look for the caller's earlier entry with this key and,
        -- only if there is none, debit the own account and log it.
        -- The earlier entry: a debit row first (a grant to the caller's own
        -- account under the same key must not hide the debit this call is a
        -- retry of). Two branches, one per index: an OR across user_id and
        -- actor_user_id would leave the key alone as the index condition and
        -- scan every keyed row ever written.
        WITH earlier AS (
            SELECT e.id
            FROM (
                SELECT l.id, l.type FROM credit_usage_log l
                WHERE l.user_id = p_user_id AND l.idempotency_key = p_idempotency_key
                  AND l.actor_user_id IS NULL
                UNION ALL
                SELECT l.id, l.type FROM credit_usage_log l
                WHERE l.actor_user_id = p_user_id AND l.idempotency_key = p_idempotency_key
            ) AS e
            ORDER BY e.type = 'debit' DESC, e.id
            LIMIT 1
        ), debited AS (
            UPDATE user_credits
            SET used_credits = used_credits + p_amount, last_updated = now()
            WHERE user_id = p_user_id AND remaining_credits >= p_amount
              AND NOT EXISTS (SELECT FROM earlier)
            RETURNING remaining_credits
        ), logged AS (
            INSERT INTO credit_usage_log
                (user_id, amount, type, source, description, idempotency_key)
            SELECT p_user_id, -p_amount, 'debit', p_source, p_description, p_idempotency_key
            FROM debited
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id
        )
        SELECT x.earlier_id, x.remaining,
               -- The result is built here, not in a RETURN expression: one
               -- condition below instead of three on the way out.
               CASE WHEN x.log_id IS NOT NULL THEN jsonb_build_object(
                   'log_id', x.log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                   'amount', p_amount, 'remaining_credits', x.remaining,
                   'from_team_pool', false, 'replayed', false) END
        INTO v_earlier, v_remaining, v_result
        FROM (SELECT (SELECT id FROM earlier) AS earlier_id,
                     (SELECT remaining_credits FROM debited) AS remaining,
                     (SELECT id FROM logged) AS log_id) AS x;

        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;

        IF v_earlier IS NOT NULL THEN
            SELECT * INTO v_entry FROM credit_usage_log l WHERE l.id = v_earlier;
            IF v_entry.type <> 'debit' OR v_entry.amount <> -p_amount
               OR v_entry.source <> p_source THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s; this call: debit of %s, source %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, p_amount, p_source);
            END IF;
            RETURN credits_replayed_result(v_entry);
        END IF;

        IF v_remaining IS NOT NULL THEN
            -- Debited but not logged: the key is another call's on this
            -- account. Raising rolls the debit back with everything else.
            RAISE EXCEPTION 'idempotency key % was already used on this account by another call',
                p_idempotency_key
                USING ERRCODE = 'CR007', DETAIL = format('account %s', p_user_id);
        END IF;
    END IF;

    -- The own account could not pay (or has no balance row yet): the pool.
    -- One statement finds the pool, debits it and logs the entry, so the pool
    -- row, which every member of the team contends for, is locked only for
    -- the rest of this statement and the commit.
    WITH pool AS (
        SELECT t.team_admin_id FROM team_credit_sharing t WHERE t.team_member_id = p_user_id
    ), debited AS (
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = (SELECT team_admin_id FROM pool) AND remaining_credits >= p_amount
        RETURNING user_id, remaining_credits
    ), logged AS (
        INSERT INTO credit_usage_log
            (user_id, actor_user_id, amount, type, source, description, idempotency_key)
        SELECT d.user_id, p_user_id, -p_amount, 'debit', p_source, p_description,
               p_idempotency_key
        FROM debited d
        ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT x.admin_id, x.remaining,
           CASE WHEN x.log_id IS NOT NULL THEN jsonb_build_object(
               'log_id', x.log_id, 'account_user_id', x.admin_id, 'actor_user_id', p_user_id,
               'amount', p_amount, 'remaining_credits', x.remaining,
               'from_team_pool', true, 'replayed', false) END
    INTO v_admin, v_remaining, v_result
    FROM (SELECT (SELECT team_admin_id FROM pool) AS admin_id,
                 (SELECT remaining_credits FROM debited) AS remaining,
                 (SELECT id FROM logged) AS log_id) AS x;

    IF v_result IS NOT NULL THEN
        RETURN v_result;
    ELSIF v_remaining IS NOT NULL THEN
        -- Debited but not logged: the key is another call's on the pool account.
        RAISE EXCEPTION 'idempotency key % was already used on the team pool account by another call',
            p_idempotency_key
            USING ERRCODE = 'CR007', DETAIL = format('team pool account %s', v_admin);
    END IF;

    -- Refused: only now is it worth telling an unknown user from a poor one.
    PERFORM 1 FROM users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    SELECT uc.remaining_credits INTO v_own FROM user_credits uc WHERE uc.user_id = p_user_id;
    IF v_admin IS NOT NULL THEN
        SELECT uc.remaining_credits INTO v_pool FROM user_credits uc WHERE uc.user_id = v_admin;
    END IF;
    RAISE EXCEPTION 'insufficient credits: % requested', p_amount
        USING ERRCODE = 'CR001',
              DETAIL = format('own remaining %s; team pool %s',
                              coalesce(v_own::text, 'none (no balance yet)'),
                              CASE WHEN v_admin IS NULL THEN 'none (not in a team)'
                                   ELSE format('of %s remaining %s', v_admin,
                                               coalesce(v_pool::text, 'none'))
                              END);
END
$$;

REVOKE EXECUTE ON FUNCTION debit_credits(uuid, integer, text, text, text) FROM PUBLIC;

COMMENT ON FUNCTION debit_credits(uuid, integer, text, text, text) IS
    'Spend p_amount from the own account, else wholly from the team pool; CR001 if neither can pay. Keyed calls replay (replayed = true) instead of spending twice. Only credits_admin members may debit another user''s account (else 42501).';

-- ---- 016_grant_credits.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION grant_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'admin_grant',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_log_id    bigint;
    v_remaining integer;
    v_total     integer;
    v_entry     credit_usage_log;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a grant must be a positive integer',
            coalesce(p_amount::text, 'NULL') USING ERRCODE = 'CR006';
    ELSIF p_source IS NULL OR p_source = '' THEN
        RAISE EXCEPTION 'p_source must be a non-empty text' USING ERRCODE = '22023';
    ELSIF p_idempotency_key = '' OR length(p_idempotency_key) > 255 THEN
        -- A longer key might not fit the unique index (54000): refuse it by name.
        RAISE EXCEPTION 'p_idempotency_key must be NULL or 1 to 255 characters'
            USING ERRCODE = '22023';
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'credits_db.idempotency:' || p_user_id::text || ':' || p_idempotency_key, 0));

        SELECT l.* INTO v_entry
        FROM credit_usage_log l
        WHERE l.user_id = p_user_id AND l.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_entry.type <> 'credit' OR v_entry.amount <> p_amount
               OR v_entry.source <> p_source THEN
                RAISE EXCEPTION 'idempotency key % was already used with different parameters',
                    p_idempotency_key
                    USING ERRCODE = 'CR007',
                          DETAIL = format('entry %s: %s of %s, source %s; this call: credit of %s, source %s',
                                          v_entry.id, v_entry.type, abs(v_entry.amount),
                                          v_entry.source, p_amount, p_source);
            END IF;
            RETURN credits_replayed_result(v_entry);
        END IF;
    END IF;

    -- Checked up front because the upsert would report it as a foreign-key
    -- violation (23503), which callers cannot tell from other failures.
    PERFORM 1 FROM users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'CR005';
    END IF;

    WITH opened AS (
        INSERT INTO user_credits (user_id, total_credits)
        SELECT c.user_id, c.credits FROM credits_backfill_candidates c
        WHERE c.user_id = p_user_id
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id, total_credits
    )
    INSERT INTO credit_usage_log (user_id, amount, type, source, description)
    SELECT o.user_id, o.total_credits, 'credit', 'backfill',
           'backfill allocation (account opened by a grant)'
    FROM opened o
    WHERE o.total_credits > 0;

    INSERT INTO user_credits AS uc (user_id, total_credits)
    VALUES (p_user_id, p_amount)
    ON CONFLICT (user_id) DO UPDATE
        SET total_credits = uc.total_credits + EXCLUDED.total_credits, last_updated = now()
        WHERE uc.total_credits <= 2147483647 - EXCLUDED.total_credits
    RETURNING uc.remaining_credits INTO v_remaining;

    IF NOT FOUND THEN
        -- The upsert locked the row even though its WHERE refused it.
        SELECT uc.total_credits INTO v_total FROM user_credits uc WHERE uc.user_id = p_user_id;
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', p_amount
            USING ERRCODE = 'CR006',
                  DETAIL = format('total_credits is %s; at most %s more can be granted',
                                  v_total, 2147483647 - v_total);
    END IF;

    INSERT INTO credit_usage_log (user_id, amount, type, source, description, idempotency_key)
    VALUES (p_user_id, p_amount, 'credit', p_source, p_description, p_idempotency_key)
    ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_log_id;
    IF v_log_id IS NULL THEN
        -- Taken since the replay check by a caller holding a different lock: a
        -- team member's keyed debit of this (admin's) account.
        RAISE EXCEPTION 'idempotency key % was already used on this account by another call',
            p_idempotency_key
            USING ERRCODE = 'CR007', DETAIL = format('account %s', p_user_id);
    END IF;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
        'amount', p_amount, 'remaining_credits', v_remaining,
        'from_team_pool', false, 'replayed', false);
END
$$;

REVOKE EXECUTE ON FUNCTION grant_credits(uuid, integer, text, text, text) FROM PUBLIC;

COMMENT ON FUNCTION grant_credits(uuid, integer, text, text, text) IS
    'Add p_amount to the account''s total_credits (creating its balance row if missing). CR006 if the total would exceed 2^31-1; keyed calls replay.';

-- ---- 017_refund_credits.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION refund_credits(p_log_id bigint, p_description text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_debit     credit_usage_log;
    v_prior     bigint;
    v_remaining integer;
    v_log_id    bigint;
BEGIN
    IF p_log_id IS NULL THEN
        RAISE EXCEPTION 'nothing to refund: p_log_id is NULL' USING ERRCODE = 'CR008';
    END IF;

    SELECT l.* INTO v_debit FROM credit_usage_log l WHERE l.id = p_log_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'nothing to refund: no log entry %', p_log_id USING ERRCODE = 'CR008';
    END IF;
    IF v_debit.type <> 'debit' THEN
        RAISE EXCEPTION 'log entry % is not a debit', p_log_id
            USING ERRCODE = 'CR008',
                  DETAIL = format('entry %s is a %s (source %s); only debits can be refunded',
                                  p_log_id, v_debit.type, v_debit.source);
    END IF;

    PERFORM 1 FROM user_credits uc WHERE uc.user_id = v_debit.user_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %: the account of log entry % no longer exists',
            v_debit.user_id, p_log_id USING ERRCODE = 'CR005';
    END IF;

    SELECT l.id INTO v_prior FROM credit_usage_log l WHERE l.refund_of = p_log_id;
    IF FOUND THEN
        RAISE EXCEPTION 'log entry % was already refunded', p_log_id
            USING ERRCODE = 'CR008', DETAIL = format('refund entry %s', v_prior);
    END IF;

    -- v_debit.amount is negative: subtracting it adds the refund, refused (not
    -- wrapped) if the total would pass the integer range.
    UPDATE user_credits
    SET total_credits = total_credits - v_debit.amount, last_updated = now()
    WHERE user_id = v_debit.user_id AND total_credits <= 2147483647 + v_debit.amount
    RETURNING remaining_credits INTO v_remaining;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid amount %: total_credits would exceed 2147483647', -v_debit.amount
            USING ERRCODE = 'CR006';
    END IF;

    INSERT INTO credit_usage_log
        (user_id, actor_user_id, amount, type, source, description, refund_of)
    VALUES (v_debit.user_id, v_debit.actor_user_id, -v_debit.amount, 'credit', 'refund',
            coalesce(p_description, format('refund of entry %s', p_log_id)), p_log_id)
    RETURNING id INTO v_log_id;

    RETURN jsonb_build_object(
        'log_id', v_log_id, 'account_user_id', v_debit.user_id,
        'actor_user_id', v_debit.actor_user_id, 'amount', -v_debit.amount,
        'remaining_credits', v_remaining,
        'from_team_pool', v_debit.actor_user_id IS NOT NULL, 'replayed', false);
END
$$;

REVOKE EXECUTE ON FUNCTION refund_credits(bigint, text) FROM PUBLIC;

COMMENT ON FUNCTION refund_credits(bigint, text) IS
    'Reverse one debit onto its account (a refund credit: total_credits increases). CR008 if not a debit or already refunded.';

-- ---- 018_get_credit_balance.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF NOT pg_has_role(coalesce(nullif(current_setting('role'), 'none'), session_user)::name,
                       'credits_admin', 'MEMBER')
       AND (p_user_id = credits_current_user_id()) IS NOT TRUE THEN
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
               END,
        'team_admin_id', t.team_admin_id,
        'team_pool_remaining', pool.remaining_credits,
        'spendable', coalesce(greatest(own.remaining_credits, pool.remaining_credits), 0)
    )
    INTO v_result
    FROM users u
    LEFT JOIN user_credits own ON own.user_id = u.id
    LEFT JOIN team_credit_sharing t ON t.team_member_id = u.id
    LEFT JOIN user_credits pool ON pool.user_id = t.team_admin_id
    WHERE u.id = p_user_id;

    IF v_result IS NULL THEN
        RAISE EXCEPTION 'unknown user %', coalesce(p_user_id::text, 'NULL') USING ERRCODE = 'CR005';
    END IF;
    RETURN v_result;
END
$$;

REVOKE EXECUTE ON FUNCTION get_credit_balance(uuid) FROM PUBLIC;

COMMENT ON FUNCTION get_credit_balance(uuid) IS
    'Own balance, team pool and spendable (the largest single debit accepted now) of one user; CR005 if unknown. Only credits_admin members may read another user''s balance (else 42501).';

-- ---- 019_role_change_topup.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credits_topup_on_role_change() RETURNS trigger
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

REVOKE EXECUTE ON FUNCTION credits_topup_on_role_change() FROM PUBLIC;

COMMENT ON FUNCTION credits_topup_on_role_change() IS
    'Trigger: top up total_credits when users.role changes to a role with a larger allocation (never lowers it).';

-- ---- 020_verify_credit_integrity.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION verify_credit_integrity() RETURNS TABLE (user_id uuid, problem text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH sums AS (
        SELECT uc.user_id, uc.total_credits, uc.used_credits, uc.remaining_credits,
               coalesce(s.total, 0) AS log_total,
               coalesce(s.granted, 0) AS log_granted,
               coalesce(s.spent, 0) AS log_spent
        FROM user_credits uc
        LEFT JOIN (
            SELECT l.user_id,
                   sum(l.amount) AS total,
                   sum(l.amount) FILTER (WHERE l.type = 'credit') AS granted,
                   -sum(l.amount) FILTER (WHERE l.type = 'debit') AS spent
            FROM credit_usage_log l
            GROUP BY l.user_id
        ) s ON s.user_id = uc.user_id
    ),
    pools AS (
        SELECT t.team_admin_id, count(*) AS members, u.role,
               coalesce(rc.team_member_limit, fallback.team_member_limit, 0) AS member_limit
        FROM team_credit_sharing t
        JOIN users u ON u.id = t.team_admin_id
        LEFT JOIN role_credits rc ON rc.role = u.role
        LEFT JOIN role_credits fallback ON fallback.role = 'member'
        GROUP BY t.team_admin_id, u.role, rc.team_member_limit, fallback.team_member_limit
    )
    SELECT s.user_id, format('remaining_credits %s <> sum of log amounts %s',
                             s.remaining_credits, s.log_total)
    FROM sums s WHERE s.remaining_credits IS DISTINCT FROM s.log_total
    UNION ALL
    SELECT s.user_id, format('total_credits %s <> sum of credits %s',
                             s.total_credits, s.log_granted)
    FROM sums s WHERE s.total_credits <> s.log_granted
    UNION ALL
    SELECT s.user_id, format('used_credits %s <> sum of debits %s',
                             s.used_credits, s.log_spent)
    FROM sums s WHERE s.used_credits <> s.log_spent
    UNION ALL
    SELECT s.user_id, format('negative balance: total %s, used %s, remaining %s',
                             s.total_credits, s.used_credits, s.remaining_credits)
    FROM sums s
    WHERE s.total_credits < 0 OR s.used_credits < 0 OR s.remaining_credits < 0
    UNION ALL
    SELECT r.user_id, format('refund entry %s does not reverse entry %s (%s)', r.id, r.refund_of,
                             CASE WHEN d.type <> 'debit' THEN 'not a debit'
                                  WHEN d.user_id <> r.user_id THEN 'another account'
                                  WHEN r.type <> 'credit' THEN 'refund is not a credit'
                                  ELSE format('amount %s, debit %s', r.amount, d.amount)
                             END)
    FROM credit_usage_log r
    JOIN credit_usage_log d ON d.id = r.refund_of
    WHERE (d.type <> 'debit' OR d.user_id <> r.user_id OR r.type <> 'credit'
           OR r.amount <> -d.amount)
      AND EXISTS (SELECT 1 FROM user_credits uc WHERE uc.user_id = r.user_id)
    UNION ALL
    SELECT p.team_admin_id, format('team pool has %s members; role %s allows %s',
                                   p.members, coalesce(quote_literal(p.role), 'NULL'),
                                   p.member_limit)
    FROM pools p WHERE p.member_limit > 0 AND p.members > p.member_limit
    UNION ALL
    SELECT t.team_member_id, format('member of the team of %s, whose role %s allows no team',
                                    t.team_admin_id, coalesce(quote_literal(p.role), 'NULL'))
    FROM team_credit_sharing t
    JOIN pools p ON p.team_admin_id = t.team_admin_id
    WHERE p.member_limit = 0
$$;

REVOKE EXECUTE ON FUNCTION verify_credit_integrity() FROM PUBLIC;

COMMENT ON FUNCTION verify_credit_integrity() IS
    'One row per broken invariant (balance vs ledger, negative values, bad refunds, pools over their cap or without a team role); no rows when all hold.';

-- ---- 022_current_user_id.sql (as of 0006) ----
CREATE OR REPLACE FUNCTION credits_current_user_id() RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_setting text;
    v_user_id uuid;
BEGIN
    IF to_regprocedure('auth.uid()') IS NOT NULL THEN
        EXECUTE 'SELECT auth.uid()' INTO v_user_id;
        RETURN v_user_id;
    END IF;

    v_setting := current_setting('credits.user_id', true);
    IF v_setting IS NULL OR v_setting = '' THEN
        RETURN NULL;
    END IF;
    -- The cast's own 22P02 names the bad value; no exception block, which
    -- would cost a subtransaction on every call.
    RETURN v_setting::uuid;
END
$$;

REVOKE EXECUTE ON FUNCTION credits_current_user_id() FROM PUBLIC;

COMMENT ON FUNCTION credits_current_user_id() IS
    'The user the current request acts for: auth.uid() when it exists (Supabase), else the setting credits.user_id (empty = NULL, not a uuid = 22P02).';

DROP FUNCTION credits_internal.replayed_result(credit_usage_log, integer);
DROP FUNCTION credits_internal.current_user_id();
DROP SCHEMA credits_internal;

DROP TABLE credit_idempotency_keys;

ALTER TABLE team_credit_sharing
    DROP CONSTRAINT team_credit_sharing_seat_unique,
    DROP CONSTRAINT team_credit_sharing_seat_positive,
    DROP COLUMN seat;

ALTER TABLE user_credits
    DROP COLUMN allocated_credits,
    DROP COLUMN opened_after_log_id;

COMMENT ON TABLE user_credits IS
    'Balance per account; remaining_credits = total_credits - used_credits = sum(credit_usage_log.amount).';
