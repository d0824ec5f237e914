-- credits-db 0002: team pools, debit/grant/refund with idempotency, balance, role-change top-up, integrity check (frozen; see sql/ for current definitions).

-- ---- 010_team_credit_sharing.sql ----
-- A team admin shares their own balance with their members: a member whose own
-- account cannot pay for a debit spends from the admin's account instead. The
-- pool is the admin's user_credits row itself, so there is no second balance to
-- keep in step. A member belongs to at most one pool (UNIQUE), so a debit never
-- has to choose between pools. Deleting either user ends the membership.
--
-- Its two foreign keys lock the host's users table against writes for the
-- instant of this CREATE TABLE (SHARE ROW EXCLUSIVE; nothing to scan).
CREATE TABLE team_credit_sharing (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_admin_id  uuid NOT NULL
                   CONSTRAINT team_credit_sharing_admin_fkey
                   REFERENCES users (id) ON DELETE CASCADE,
    team_member_id uuid NOT NULL
                   CONSTRAINT team_credit_sharing_member_fkey
                   REFERENCES users (id) ON DELETE CASCADE
                   CONSTRAINT team_credit_sharing_member_unique UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT team_credit_sharing_not_self CHECK (team_admin_id <> team_member_id)
);

-- Counting a pool's members (the cap check in add_team_member) and the cascade
-- when an admin is deleted are both lookups by admin.
-- The table is created empty just above: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX team_credit_sharing_admin_idx ON team_credit_sharing (team_admin_id);

REVOKE ALL ON team_credit_sharing FROM PUBLIC;

COMMENT ON TABLE team_credit_sharing IS
    'Team pools: each member may spend from their admin''s balance when their own is short. One pool per member.';

-- ---- 011_spending_log_columns.sql ----
-- Refunds and idempotency keys, on the existing append-only ledger.
--
-- refund_of links a refund (a new 'credit' row, since the log is never edited)
-- to the debit it reverses. UNIQUE makes "refunded at most once" a property of
-- the table rather than of the code path that writes it; the column is nullable
-- without a default, so adding it does not rewrite the log.
--
-- Heavy lock, on purpose: building the UNIQUE index (and the new foreign key,
-- which has nothing to validate) holds ACCESS EXCLUSIVE on the log for one
-- scan of it. CONCURRENTLY cannot run inside the revision's transaction, and
-- an upgrade that half-applies is worse than a short pause of credit writes:
-- on a large ledger, run this upgrade in a quiet window.
ALTER TABLE credit_usage_log
    ADD COLUMN refund_of bigint
        -- squawk-ignore adding-foreign-key-constraint
        CONSTRAINT credit_usage_log_refund_of_fkey REFERENCES credit_usage_log (id)
        -- squawk-ignore disallowed-unique-constraint
        CONSTRAINT credit_usage_log_refund_of_unique UNIQUE;

-- An idempotency key is scoped to the account the entry was written to: the
-- index both finds a replay and guarantees that two racing calls cannot both
-- write. Rows without a key (the common case) are not indexed at all.
-- Same quiet window as above.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX credit_usage_log_idempotency_key_idx
    ON credit_usage_log (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A member's keyed debit of a team pool is written to the admin's account with
-- the member as actor. Finding it again by the member (the replay check) must
-- not depend on the member still being in that pool, or a retry after leaving
-- the team would debit a second time.
-- Same quiet window as above.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_actor_idempotency_key_idx
    ON credit_usage_log (actor_user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND actor_user_id IS NOT NULL;

COMMENT ON COLUMN credit_usage_log.refund_of IS
    'For a refund (source refund, type credit): the debit it reverses. Each debit is refunded at most once.';

-- ---- 012_replayed_result.sql ----
-- A replayed call answers exactly what the original call answered, without
-- storing answers: remaining_credits after an entry is the running sum of the
-- account's log up to that entry. The sum is exact because every writer appends
-- to an account's log only while it holds the lock on that account's
-- user_credits row, so within one account ids follow commit order. It reads the
-- account's history, a cost only a replay (a retry) pays.
CREATE FUNCTION credits_replayed_result(p_entry credit_usage_log) RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
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

-- ---- 013_add_team_member.sql ----
-- Adds a member to an admin's pool. Checks run in this order, each on its own
-- so that the error names the first thing wrong, and none of them writes:
--   1. a NULL id is an unknown user (CR005): NULL can never name a user;
--   2. admin = member (CR009), before any lookup, since it needs none;
--   3. the admin exists (CR005), and their users row is locked (see below);
--   4. the member exists (CR005);
--   5. the admin's role allows a team, team_member_limit > 0 (CR003); a NULL or
--      unknown role has the member row's limit, like its allocation;
--   6. the member's current pool: this admin's means the pair exists already
--      and the call is a no-op; another admin's is CR004;
--   7. the pool has room (CR002).
--
-- The cap must hold when several adds for one admin run at once. Counting and
-- inserting without a lock lets each of them count the same free seat, so the
-- admin's users row is locked first (FOR NO KEY UPDATE: it queues adds for
-- the same admin and role changes of that admin, but not the foreign-key
-- checks of unrelated inserts), and the count runs after the lock is granted,
-- when READ COMMITTED shows every member an earlier add committed.
CREATE FUNCTION add_team_member(p_team_admin_id uuid, p_team_member_id uuid) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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

-- ---- 014_remove_team_member.sql ----
-- Removing needs no lock on the admin: it can only lower a pool's head count,
-- which never breaks the cap. A debit already past its membership lookup may
-- still spend from the pool; it is ordered before the removal.
-- A NULL id is an unknown user (CR005), as in add_team_member; an unknown but
-- non-NULL pair simply is not a membership, so the answer is false.
CREATE FUNCTION remove_team_member(p_team_admin_id uuid, p_team_member_id uuid) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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

-- ---- 015_debit_credits.sql ----
-- Spends credits: from the user's own account if it can pay the whole amount,
-- else from their team admin's account if that can, else CR001. Never split: a
-- debit is one log row on one account.
--
-- Every balance change is one conditional UPDATE (the WHERE re-checks the
-- balance on the locked, latest row version), never a read followed by a write,
-- so concurrent debits can neither overdraw nor lose an update; the log row is
-- written in the same transaction.
--
-- The own-account debit without an idempotency key is the hot path: a single
-- statement, the UPDATE and the log INSERT together, with no query before it.
-- Anything else (naming a bad argument, unknown user, team pool, diagnosing a
-- refusal) is looked up only after that UPDATE found nothing to debit.
--
-- Idempotency: a key is scoped to the account the entry is written to (the
-- unique index on (user_id, idempotency_key)). The caller's earlier entry for
-- a key is their own-account entry with that key, or any pool entry they made
-- with it (actor = caller), whatever pool they are in now, so leaving a team
-- cannot turn a retry into a second debit. Racing calls by one caller with one
-- key queue on a transaction-scoped advisory lock on (caller, key) and then
-- find the winner's entry; a key taken on the account by someone else (another
-- member of the same pool, or a grant) is CR007.
--
-- Argument errors, checked in this order: NULL user CR005, NULL or non-positive
-- amount CR006, NULL or empty source 22023, empty or over-255-character key 22023.
CREATE FUNCTION debit_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'usage',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_log_id    bigint;
    v_remaining integer;
    v_admin     uuid;
    v_entry     credit_usage_log;
    v_own       integer;
    v_pool      integer;
    v_result    jsonb;
BEGIN
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

    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'unknown user: p_user_id must not be NULL' USING ERRCODE = 'CR005';
    ELSIF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %: a debit must be a positive integer',
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

        -- A debit row first: a grant to the caller's own account under the same
        -- key must not hide the debit this call is a retry of.
        -- Two branches, one per index: an OR across user_id and actor_user_id
        -- would leave the key alone as the index condition and scan every
        -- keyed row ever written.
        SELECT e.* INTO v_entry
        FROM (
            SELECT l.* FROM credit_usage_log l
            WHERE l.user_id = p_user_id AND l.idempotency_key = p_idempotency_key
              AND l.actor_user_id IS NULL
            UNION ALL
            SELECT l.* FROM credit_usage_log l
            WHERE l.actor_user_id = p_user_id AND l.idempotency_key = p_idempotency_key
        ) AS e
        ORDER BY e.type = 'debit' DESC, e.id
        LIMIT 1;
        IF FOUND THEN
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

        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = p_user_id AND remaining_credits >= p_amount
        RETURNING remaining_credits INTO v_remaining;

        IF FOUND THEN
            INSERT INTO credit_usage_log
                (user_id, amount, type, source, description, idempotency_key)
            VALUES (p_user_id, -p_amount, 'debit', p_source, p_description, p_idempotency_key)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id INTO v_log_id;
            IF v_log_id IS NULL THEN
                RAISE EXCEPTION 'idempotency key % was already used on this account by another call',
                    p_idempotency_key
                    USING ERRCODE = 'CR007', DETAIL = format('account %s', p_user_id);
            END IF;
            RETURN jsonb_build_object(
                'log_id', v_log_id, 'account_user_id', p_user_id, 'actor_user_id', NULL,
                'amount', p_amount, 'remaining_credits', v_remaining,
                'from_team_pool', false, 'replayed', false);
        END IF;
    END IF;

    -- The own account could not pay (or has no balance row yet): the pool.
    SELECT t.team_admin_id INTO v_admin
    FROM team_credit_sharing t WHERE t.team_member_id = p_user_id;

    IF FOUND THEN
        UPDATE user_credits
        SET used_credits = used_credits + p_amount, last_updated = now()
        WHERE user_id = v_admin AND remaining_credits >= p_amount
        RETURNING remaining_credits INTO v_remaining;

        IF FOUND THEN
            INSERT INTO credit_usage_log
                (user_id, actor_user_id, amount, type, source, description, idempotency_key)
            VALUES (v_admin, p_user_id, -p_amount, 'debit', p_source, p_description,
                    p_idempotency_key)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id INTO v_log_id;
            IF v_log_id IS NULL THEN
                RAISE EXCEPTION 'idempotency key % was already used on the team pool account by another call',
                    p_idempotency_key
                    USING ERRCODE = 'CR007', DETAIL = format('team pool account %s', v_admin);
            END IF;
            RETURN jsonb_build_object(
                'log_id', v_log_id, 'account_user_id', v_admin, 'actor_user_id', p_user_id,
                'amount', p_amount, 'remaining_credits', v_remaining,
                'from_team_pool', true, 'replayed', false);
        END IF;
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
    'Spend p_amount from the own account, else wholly from the team pool; CR001 if neither can pay. Keyed calls replay (replayed = true) instead of spending twice.';

-- ---- 016_grant_credits.sql ----
-- Adds credits to one account's total. A user without a balance row (one the
-- backfill has not reached yet) first gets their role allocation, exactly as
-- the backfill would give it, and then the grant: opening the account here
-- must not cost them the allocation the backfill would no longer make.
-- Both writes are upserts, so a concurrent grant, signup or backfill cannot
-- make this fail or allocate twice.
--
-- total_credits is an integer; a grant that would push it past 2^31-1 is
-- refused with CR006 by the upsert's own WHERE, on the locked row, rather than
-- by an integer-overflow error (or, worse, a wrap) from the addition.
--
-- Idempotency: the key is scoped to the account (the grant's own user_id).
-- Racing grants with one key queue on the same advisory lock as debits of that
-- user with that key, then replay the winner's entry; an entry with the key and
-- different type, amount or source is CR007.
--
-- Argument errors, checked in this order: NULL user CR005, NULL or
-- non-positive amount CR006, NULL or empty source 22023, empty or over-255-character key 22023,
-- then the key's replay, then unknown user CR005, then overflow CR006.
CREATE FUNCTION grant_credits(
    p_user_id         uuid,
    p_amount          integer,
    p_source          text DEFAULT 'admin_grant',
    p_description     text DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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

-- ---- 017_refund_credits.sql ----
-- Reverses one debit onto the account it came from (the team admin's for a
-- pool debit). The log is append-only, so the refund is a new 'credit' row,
-- source 'refund', whose refund_of names the debit; like every credit it
-- raises total_credits, which keeps the ledger identities plain:
-- total_credits = sum of credits, used_credits = -(sum of debits).
--
-- At most once: concurrent refunds of one debit queue on the account's
-- user_credits row lock, taken before the "already refunded?" look-up, so the
-- second sees the first's committed row and answers CR008; the UNIQUE
-- constraint on refund_of backs this up whatever the path.
--
-- A NULL, unknown or non-debit log id is CR008 (nothing refundable there). A
-- debit whose account no longer exists (the user was deleted) is CR005.
CREATE FUNCTION refund_credits(p_log_id bigint, p_description text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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

-- ---- 018_get_credit_balance.sql ----
-- What a user can spend right now. One statement, so own balance, pool
-- membership and pool balance come from one snapshot and agree with each
-- other. spendable is the largest amount a single debit_credits call would
-- accept: debits are never split, so it is the larger of the two balances,
-- not their sum. A NULL id is an unknown user (CR005).
CREATE FUNCTION get_credit_balance(p_user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_result jsonb;
BEGIN
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
    'Own balance, team pool and spendable (the largest single debit accepted now) of one user; CR005 if unknown.';

-- ---- 019_role_change_topup.sql ----
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
SET search_path = pg_catalog, public
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

-- ---- 020_verify_credit_integrity.sql ----
-- Every invariant the spending functions rely on, checked from scratch against
-- the ledger; one row per violation, none when all hold. It reads without
-- locking, from one snapshot, so it can run beside live traffic.
--
-- The ledger identities (a refund is a credit like any other):
--   remaining_credits = sum(amount)
--   total_credits     = sum of credits
--   used_credits      = -(sum of debits)
-- Only accounts that still have a balance row are compared: a deleted user's
-- log rows stay as the audit trail, with nothing to compare them to.
CREATE FUNCTION verify_credit_integrity() RETURNS TABLE (user_id uuid, problem text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
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
