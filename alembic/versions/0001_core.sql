-- credits-db 0001: core schema, signup allocation and backfill (frozen; see sql/ for current definitions).

-- ---- 001_install_record.sql ----
-- What this installation of credits-db created, so that a downgrade removes
-- exactly that and never an object the host application owns.
CREATE TABLE credits_db_install (
    singleton           boolean PRIMARY KEY DEFAULT true
                        CONSTRAINT credits_db_install_singleton CHECK (singleton),
    created_users_table boolean NOT NULL,
    installed_at        timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON credits_db_install FROM PUBLIC;

-- ---- 002_users.sql ----
-- public.users belongs to the host application. credits-db needs only
-- id uuid (unique, so it can be referenced) and role text. A database without a
-- users table gets a minimal one, so that a fresh install works on its own; an
-- existing table that lacks what we need stops the install with an error naming
-- every missing piece, before anything is created that depends on it.
DO $install_users$
DECLARE
    v_problems text[] := ARRAY[]::text[];
    v_id_type  regtype;
    v_role_type regtype;
BEGIN
    IF to_regclass('public.users') IS NULL THEN
        CREATE TABLE public.users (
            id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email      text UNIQUE,
            role       text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO credits_db_install (created_users_table) VALUES (true);
        RETURN;
    END IF;

    IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid = 'public.users'::regclass)
       NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'credits-db cannot install: public.users is not a table'
            USING ERRCODE = '42809';
    END IF;

    SELECT atttypid::regtype INTO v_id_type
    FROM pg_catalog.pg_attribute
    WHERE attrelid = 'public.users'::regclass AND attname = 'id' AND NOT attisdropped;
    SELECT atttypid::regtype INTO v_role_type
    FROM pg_catalog.pg_attribute
    WHERE attrelid = 'public.users'::regclass AND attname = 'role' AND NOT attisdropped;

    IF v_id_type IS NULL THEN
        v_problems := v_problems || 'column id (uuid) is missing'::text;
    ELSIF v_id_type <> 'uuid'::regtype THEN
        v_problems := v_problems || format('column id is %s, not uuid', v_id_type);
    ELSIF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        WHERE i.indrelid = 'public.users'::regclass AND i.indisunique
          AND i.indpred IS NULL AND i.indnkeyatts = 1
          AND i.indkey[0] = (SELECT attnum FROM pg_catalog.pg_attribute
                             WHERE attrelid = 'public.users'::regclass AND attname = 'id')
    ) THEN
        v_problems := v_problems || 'column id is neither PRIMARY KEY nor UNIQUE'::text;
    END IF;

    IF v_role_type IS NULL THEN
        v_problems := v_problems || 'column role (text) is missing'::text;
    ELSIF v_role_type NOT IN ('text'::regtype, 'character varying'::regtype) THEN
        v_problems := v_problems || format('column role is %s, not text', v_role_type);
    END IF;

    IF cardinality(v_problems) > 0 THEN
        RAISE EXCEPTION 'credits-db cannot install: public.users: %',
            array_to_string(v_problems, '; ')
            USING ERRCODE = '42703',
                  HINT = 'credits-db needs users(id uuid PRIMARY KEY, role text).';
    END IF;

    INSERT INTO credits_db_install (created_users_table) VALUES (false);
END
$install_users$;

-- ---- 003_role_credits.sql ----
-- The allocation each role receives. Role names are case-sensitive, exactly as
-- stored in users.role. Changing a row changes future allocations only: no
-- existing balance is recomputed from this table.
CREATE TABLE role_credits (
    role              text PRIMARY KEY,
    credits           integer NOT NULL
                      CONSTRAINT role_credits_credits_nonnegative CHECK (credits >= 0),
    team_member_limit integer NOT NULL DEFAULT 0
                      CONSTRAINT role_credits_team_member_limit_nonnegative
                      CHECK (team_member_limit >= 0)
);

INSERT INTO role_credits (role, credits, team_member_limit) VALUES
    ('member',       350, 0),
    ('admin',       1000, 0),
    ('team_admin',  5000, 4),
    ('RecruitPro',  1000, 0),
    ('super_admin', 10000, 0);

COMMENT ON TABLE role_credits IS
    'Credits allocated per users.role. A NULL or unknown role gets the member row (the fallback).';

-- ---- 004_user_credits.sql ----
-- One balance per account. remaining_credits is derived, never written, so it
-- cannot disagree with total and used; the CHECKs make an overdraft or a
-- negative grant impossible whatever code path writes the row.
--
-- The foreign key takes a SHARE ROW EXCLUSIVE lock on the host's users table
-- for the instant of this CREATE TABLE (nothing to scan: the table is new);
-- writes to users wait that long, reads never do.
CREATE TABLE user_credits (
    user_id           uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    total_credits     integer NOT NULL
                      CONSTRAINT user_credits_total_nonnegative CHECK (total_credits >= 0),
    used_credits      integer NOT NULL DEFAULT 0
                      CONSTRAINT user_credits_used_nonnegative CHECK (used_credits >= 0),
    remaining_credits integer GENERATED ALWAYS AS (total_credits - used_credits) STORED,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_updated      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_credits_remaining_nonnegative CHECK (used_credits <= total_credits)
);

COMMENT ON TABLE user_credits IS
    'Balance per account; remaining_credits = total_credits - used_credits = sum(credit_usage_log.amount).';

-- ---- 005_credit_usage_log.sql ----
-- Every allocation and spend, signed: credits positive, debits negative, never 0.
-- There is deliberately no foreign key to users: the log is the audit trail and
-- outlives a deleted user (the user's balance row goes with the user, the log
-- rows stay, and the integrity check only compares accounts that still exist).
CREATE TABLE credit_usage_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid NOT NULL,
    actor_user_id   uuid,
    amount          integer NOT NULL,
    type            text NOT NULL
                    CONSTRAINT credit_usage_log_type_check CHECK (type IN ('credit', 'debit')),
    source          text NOT NULL,
    description     text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_usage_log_amount_sign CHECK (
        (type = 'credit' AND amount > 0) OR (type = 'debit' AND amount < 0)
    )
);

-- "History of one account, newest first" is an index range scan, never a sort.
-- The table is created empty just above: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_account_history_idx
    ON credit_usage_log (user_id, created_at DESC, id DESC);

COMMENT ON TABLE credit_usage_log IS
    'Append-only ledger of credits (amount > 0) and debits (amount < 0) per account.';

-- ---- 006_append_only_log.sql ----
-- A ledger is corrected by a new entry, never by editing an old one. The guard
-- fires per statement, so it costs nothing on INSERT and refuses UPDATE, DELETE
-- and TRUNCATE from every role, including the table owner.
CREATE FUNCTION credits_refuse_log_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
BEGIN
    RAISE EXCEPTION 'credit_usage_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'CR010',
              HINT = 'Correct an entry with a new one (a refund or a grant).';
END
$$;

CREATE TRIGGER credit_usage_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON credit_usage_log
    FOR EACH STATEMENT EXECUTE FUNCTION credits_refuse_log_change();

REVOKE EXECUTE ON FUNCTION credits_refuse_log_change() FROM PUBLIC;

-- ---- 007_signup_allocation.sql ----
-- Every new user gets their role's allocation in the same transaction as the
-- INSERT. One statement-level trigger with a transition table turns a bulk
-- signup (COPY, INSERT ... SELECT of 100k rows) into two set-based INSERTs
-- instead of 100k function calls.
--
-- A signup must never fail because of credits: if allocating fails for any
-- reason the users are still created, a WARNING is logged, and the next
-- backfill_user_credits() picks them up (they have no user_credits row).
CREATE FUNCTION credits_allocate_on_signup() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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

-- CREATE TRIGGER takes a SHARE ROW EXCLUSIVE lock on the host's users table
-- for an instant (no scan): signups wait that long, reads never do.
CREATE TRIGGER users_allocate_credits
    AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_users
    FOR EACH STATEMENT EXECUTE FUNCTION credits_allocate_on_signup();

REVOKE EXECUTE ON FUNCTION credits_allocate_on_signup() FROM PUBLIC;

-- ---- 008_backfill.sql ----
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

-- Allocates every user without a balance row, by role, in one set-based
-- statement. Safe to repeat and to run beside signups and other backfills:
--   * ON CONFLICT DO NOTHING never overwrites a balance, and a log row is
--     written only for a balance row this call actually inserted;
--   * a transaction-scoped advisory lock queues concurrent backfills, so the
--     second one starts after the first commits and finds nothing left to do
--     (rather than racing it row by row, which could deadlock);
--   * signups allocate in their own transaction; a user they have not
--     committed is invisible here, one they have committed has a row already.
CREATE FUNCTION backfill_user_credits(
    p_dry_run boolean DEFAULT false,
    p_limit   integer DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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

REVOKE EXECUTE ON FUNCTION backfill_user_credits(boolean, integer) FROM PUBLIC;

COMMENT ON FUNCTION backfill_user_credits(boolean, integer) IS
    'Allocate credits by role to every user without a balance row (source backfill). Idempotent; p_limit batches, p_dry_run reports without writing.';

-- ---- 009_allocation_report.sql ----
-- The verification report an operator reads after a backfill: how many users
-- hold a balance, how many still wait, and the credits held per role.
CREATE FUNCTION credit_allocation_report() RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
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

DO $notice$
BEGIN
    RAISE NOTICE 'credits-db: % existing user(s) have no credits yet; run SELECT backfill_user_credits() when ready',
        (SELECT count(*) FROM public.credits_backfill_candidates);
END
$notice$;
