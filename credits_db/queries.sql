-- The statements the Python API sends: each is one call of a SQL function,
-- so every rule lives in the database and the wrapper stays thin. Names are
-- qualified and every parameter is cast to the function's own argument type:
-- an exact match always wins, so an overload with looser types that someone
-- created in public (text for a uuid) can never take the call.
-- Sections are named "-- name: <query>" and loaded by credits_db/_queries.py.

-- name: backfill
-- Allocate credits to users who have none (or report what would happen).
SELECT public.backfill_user_credits(p_dry_run => %(dry_run)s::boolean, p_limit => %(limit)s::integer);

-- name: backfill_batch
-- Allocate credits to the users without any among the next `limit` users in
-- primary-key order after `after` (NULL: from the first).
SELECT public.backfill_user_credits_batch(p_after_user_id => %(after)s::uuid, p_limit => %(limit)s::integer);

-- name: renew
-- Give the accounts whose allowance period ended by `as_of` (NULL: now(), the
-- function's own default) their current period's allowance, `limit` at most.
SELECT public.renew_allowances(p_as_of => coalesce(%(as_of)s::timestamptz, now()),
                               p_limit => %(limit)s::integer);

-- name: renewals_due
-- For a progress line: accounts whose allowance period ended by `as_of`. Read from
-- user_credits alone (credits_admin may not read the host's users table), so an
-- account whose role stopped renewing is counted though the renewal skips it.
SELECT count(*) FROM public.user_credits
WHERE period_ends_at <= coalesce(%(as_of)s::timestamptz, now());

-- name: allocation_report
-- Users with and without credits, and credits per role.
SELECT public.credit_allocation_report();

-- name: debit
-- Spend from the user's own account, else whole from their team pool.
SELECT public.debit_credits(p_user_id => %(user_id)s::uuid, p_amount => %(amount)s::integer,
                            p_source => %(source)s::text, p_description => %(description)s::text,
                            p_idempotency_key => %(idempotency_key)s::text);

-- name: grant
-- Add credits to an account (creating its balance row if missing) as one lot,
-- expiring at expires_at (NULL: never), spent by priority (NULL: 50).
SELECT public.grant_credits(p_user_id => %(user_id)s::uuid, p_amount => %(amount)s::integer,
                            p_source => %(source)s::text, p_description => %(description)s::text,
                            p_idempotency_key => %(idempotency_key)s::text,
                            p_expires_at => %(expires_at)s::timestamptz,
                            p_priority => %(priority)s::integer);

-- name: refund
-- Reverse one debit onto the account it came from, at most once.
SELECT public.refund_credits(p_log_id => %(log_id)s::bigint, p_description => %(description)s::text);

-- name: balance
-- Own balance, team pool and the largest amount one debit would accept now.
SELECT public.get_credit_balance(p_user_id => %(user_id)s::uuid);

-- name: lots
-- One account's lots in spending order, with what is left of each and its state.
SELECT public.get_credit_lots(p_user_id => %(user_id)s::uuid);

-- name: expire
-- Expire what lots lapsed by as_of (NULL: now, the function's own default) still
-- hold, at most limit lots (NULL: all); busy accounts are skipped.
SELECT public.expire_credits(p_as_of => coalesce(%(as_of)s::timestamptz, now()),
                             p_limit => %(limit)s::integer);

-- name: lots_due
-- How many lots lapsed by as_of (NULL: now) still hold credits: what expire_credits
-- would expire. Reads the partial index of open expiring lots.
SELECT count(*)
FROM public.credit_lots l
WHERE l.expires_at <= coalesce(%(as_of)s::timestamptz, now()) AND l.taken < l.amount - l.expired;

-- name: add_team_member
-- Put a member into a team admin's pool (a no-op when already there).
SELECT public.add_team_member(p_team_admin_id => %(team_admin_id)s::uuid,
                              p_team_member_id => %(team_member_id)s::uuid);

-- name: remove_team_member
-- Take a member out of a team admin's pool; true if they were in it.
SELECT public.remove_team_member(p_team_admin_id => %(team_admin_id)s::uuid,
                                 p_team_member_id => %(team_member_id)s::uuid);

-- name: list_team_members
-- The members of one team admin's pool, oldest first.
SELECT coalesce(jsonb_agg(jsonb_build_object('team_admin_id', team_admin_id,
                                             'team_member_id', team_member_id,
                                             'created_at', created_at)
                          ORDER BY created_at, id), '[]'::jsonb)
FROM public.team_credit_sharing
WHERE team_admin_id = %(team_admin_id)s::uuid;

-- name: verify
-- Every violated invariant, one row per problem (none when all holds).
SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', user_id, 'problem', problem)
                          ORDER BY user_id, problem), '[]'::jsonb)
FROM public.verify_credit_integrity();

-- name: history
-- One account's ledger, newest first. With a cursor (the id of the last row of the
-- page before), only the rows after that one in this order: a keyset, so every
-- page reads the (user_id, created_at DESC, id DESC) index from where the last
-- stopped, and rows logged meanwhile never shift a page. A cursor naming no row of
-- this account compares with NULL: an empty page. bigint limit: a page asks for
-- one row more than it returns.
SELECT coalesce(jsonb_agg(to_jsonb(entry) ORDER BY entry.created_at DESC, entry.id DESC), '[]'::jsonb)
FROM (
    SELECT id, user_id, actor_user_id, amount, type, source, description, idempotency_key,
           created_at, lot_id
    FROM public.credit_usage_log
    WHERE user_id = %(user_id)s::uuid
      AND (%(after_id)s::bigint IS NULL
           OR (created_at, id) < ((SELECT after.created_at FROM public.credit_usage_log AS after
                                   WHERE after.id = %(after_id)s::bigint
                                     AND after.user_id = %(user_id)s::uuid),
                                  %(after_id)s::bigint))
    ORDER BY created_at DESC, id DESC
    LIMIT %(limit)s::bigint
) AS entry;

-- name: act_as
-- Act as a user until the end of the current transaction: the setting
-- credits_current_user_id() reads, set transaction-local (is_local => true), so
-- it never outlives the transaction on a server connection a pooler shares.
-- An empty value means nobody.
SELECT set_config('credits.user_id', %(user_id)s, true);

-- name: acting_user
-- Who the current transaction acts as (NULL when credits.user_id was never set).
SELECT current_setting('credits.user_id', true);

-- name: overview
-- What GET /api/billing/overview shows for a user, in one snapshot: the balance
-- (get_credit_balance: CR005 for an unknown user, 42501 for another user's as a
-- credits_user), the last %(limit)s usage rows (their own account's, for a team
-- admin including the members' pool debits, and the pool debits they made as a
-- member; two branches so each uses its index), the own account's open lots that
-- expire within %(expiring_within)s (soonest first, at most %(expiring_lots)s; as
-- get_credit_lots shows them, and only lots with an expiry are read: each is a
-- tracked lot, whose remainder is amount - taken - expired) and a recorded
-- allocation failure. credit_lots is read under its row level security: a
-- credits_user sees their own lots (and another user's balance is 42501 anyway).
SELECT jsonb_build_object(
    'balance', public.get_credit_balance(%(user_id)s::uuid),
    'recent_usage', (
        SELECT coalesce(jsonb_agg(to_jsonb(entry) ORDER BY entry.created_at DESC, entry.id DESC),
                        '[]'::jsonb)
        FROM (
            SELECT *
            FROM (
                (SELECT id, user_id, actor_user_id, amount, type, source, description,
                        idempotency_key, created_at, lot_id
                 FROM public.credit_usage_log
                 WHERE user_id = %(user_id)s::uuid
                 ORDER BY created_at DESC, id DESC
                 LIMIT %(limit)s::integer)
                UNION ALL
                (SELECT id, user_id, actor_user_id, amount, type, source, description,
                        idempotency_key, created_at, lot_id
                 FROM public.credit_usage_log
                 WHERE actor_user_id = %(user_id)s::uuid AND user_id <> %(user_id)s::uuid
                 ORDER BY created_at DESC, id DESC
                 LIMIT %(limit)s::integer)
            ) AS both_branches
            ORDER BY created_at DESC, id DESC
            LIMIT %(limit)s::integer
        ) AS entry),
    'expiring_lots', (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'lot_id', l.id, 'source', l.source, 'log_id', l.log_id, 'amount', l.amount,
                   'remaining', l.amount - l.taken - l.expired, 'taken', l.taken,
                   'expired', l.expired, 'expires_at', l.expires_at, 'priority', l.priority,
                   'created_at', l.created_at, 'state', 'open')
                   ORDER BY l.expires_at, l.id), '[]'::jsonb)
        FROM (SELECT * FROM public.credit_lots
              WHERE user_id = %(user_id)s::uuid
                AND expires_at > statement_timestamp()
                AND expires_at <= statement_timestamp() + %(expiring_within)s::interval
                AND taken < amount - expired
              ORDER BY expires_at, id
              LIMIT %(expiring_lots)s::integer) AS l),
    'failure', (SELECT to_jsonb(f) FROM public.credit_allocation_failures f
                WHERE f.user_id = %(user_id)s::uuid));

-- name: find_user
-- The ids (at most two) of the users with this id or email: to_jsonb reads email
-- whether or not the host's users table has that column. Two mean the email is
-- not unique there, and nothing is guessed.
SELECT coalesce(jsonb_agg(found.id), '[]'::jsonb)
FROM (SELECT u.id FROM public.users u
      WHERE u.id::text = lower(%(who)s::text) OR to_jsonb(u) ->> 'email' = %(who)s::text
      ORDER BY u.id LIMIT 2) AS found;

-- name: explain_user
-- What decides one user's credits: role and entitlement (as the signup and the
-- backfill compute it), the largest allocation given, the members of their pool.
SELECT (SELECT jsonb_build_object(
    'user_id', u.id,
    'email', to_jsonb(u) ->> 'email',
    'role', u.role,
    'entitlement', coalesce(rc.credits, fallback.credits, 0),
    'role_is_fallback', rc.role IS NULL,
    'allocated_credits', uc.allocated_credits,
    'team_members', (SELECT coalesce(jsonb_agg(t.team_member_id ORDER BY t.seat), '[]'::jsonb)
                     FROM public.team_credit_sharing t WHERE t.team_admin_id = u.id))
FROM public.users u
LEFT JOIN public.role_credits rc ON rc.role = u.role
LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
LEFT JOIN public.user_credits uc ON uc.user_id = u.id
WHERE u.id = %(user_id)s::uuid);

-- name: allocation_failures
-- The recorded signup allocation failures, newest first, at most %(limit)s.
SELECT coalesce(jsonb_agg(to_jsonb(f) ORDER BY f.failed_at DESC, f.user_id), '[]'::jsonb)
FROM (SELECT * FROM public.credit_allocation_failures
      ORDER BY failed_at DESC, user_id LIMIT %(limit)s::integer) AS f;
