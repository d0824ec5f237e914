-- The statements the Python API sends: each is one call of a SQL function,
-- so every rule lives in the database and the wrapper stays thin.
-- Sections are named "-- name: <query>" and loaded by credits_db/_queries.py.

-- name: backfill
-- Allocate credits to users who have none (or report what would happen).
SELECT backfill_user_credits(p_dry_run => %(dry_run)s, p_limit => %(limit)s);

-- name: backfill_batch
-- Allocate credits to the users without any among the next `limit` users in
-- primary-key order after `after` (NULL: from the first).
SELECT backfill_user_credits_batch(p_after_user_id => %(after)s, p_limit => %(limit)s);

-- name: allocation_report
-- Users with and without credits, and credits per role.
SELECT credit_allocation_report();

-- name: debit
-- Spend from the user's own account, else whole from their team pool.
SELECT debit_credits(p_user_id => %(user_id)s, p_amount => %(amount)s, p_source => %(source)s,
                     p_description => %(description)s, p_idempotency_key => %(idempotency_key)s);

-- name: grant
-- Add credits to an account (creating its balance row if missing).
SELECT grant_credits(p_user_id => %(user_id)s, p_amount => %(amount)s, p_source => %(source)s,
                     p_description => %(description)s, p_idempotency_key => %(idempotency_key)s);

-- name: refund
-- Reverse one debit onto the account it came from, at most once.
SELECT refund_credits(p_log_id => %(log_id)s, p_description => %(description)s);

-- name: balance
-- Own balance, team pool and the largest amount one debit would accept now.
SELECT get_credit_balance(p_user_id => %(user_id)s);

-- name: add_team_member
-- Put a member into a team admin's pool (a no-op when already there).
SELECT add_team_member(p_team_admin_id => %(team_admin_id)s, p_team_member_id => %(team_member_id)s);

-- name: remove_team_member
-- Take a member out of a team admin's pool; true if they were in it.
SELECT remove_team_member(p_team_admin_id => %(team_admin_id)s, p_team_member_id => %(team_member_id)s);

-- name: list_team_members
-- The members of one team admin's pool, oldest first.
SELECT coalesce(jsonb_agg(jsonb_build_object('team_admin_id', team_admin_id,
                                             'team_member_id', team_member_id,
                                             'created_at', created_at)
                          ORDER BY created_at, id), '[]'::jsonb)
FROM team_credit_sharing
WHERE team_admin_id = %(team_admin_id)s;

-- name: verify
-- Every violated invariant, one row per problem (none when all holds).
SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', user_id, 'problem', problem)
                          ORDER BY user_id, problem), '[]'::jsonb)
FROM verify_credit_integrity();

-- name: history
-- One account's ledger, newest first.
SELECT coalesce(jsonb_agg(to_jsonb(entry) ORDER BY entry.created_at DESC, entry.id DESC), '[]'::jsonb)
FROM (
    SELECT id, user_id, actor_user_id, amount, type, source, description, idempotency_key, created_at
    FROM credit_usage_log
    WHERE user_id = %(user_id)s
    ORDER BY created_at DESC, id DESC
    LIMIT %(limit)s
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
