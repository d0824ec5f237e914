-- Every invariant the spending functions rely on, checked from scratch against
-- the ledger; one row per violation, none when all hold. It reads without
-- locking, from one snapshot, so it can run beside live traffic.
--
-- The ledger identities, over the account's own entries (id above its
-- opened_after_log_id, 004; a refund is a credit like any other):
--   remaining_credits = sum(amount)
--   total_credits     = sum of credits
--   used_credits      = -(sum of debits and expiries)
--   allocated_credits = sum of role allocations (signup, backfill, role_change)
-- Only accounts that still have a balance row are compared: a deleted user's
-- log rows stay as the audit trail, with nothing to compare them to (nor do
-- they count for a user re-created with the same id). Each idempotency key
-- must name an entry with that key by its owner.
--
-- Lots (026), per account: tracked_credits = what its tracked lots hold, and
-- its untracked credits fit in its untracked lots; per lot: taken + expired
-- <= amount, taken = what debits not refunded took from it (its takes),
-- expired = its expiry entries, and the entry that created it is a credit of
-- its amount to its account.
CREATE FUNCTION verify_credit_integrity() RETURNS TABLE (user_id uuid, problem text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH sums AS (
        SELECT uc.user_id, uc.total_credits, uc.used_credits, uc.remaining_credits,
               uc.allocated_credits,
               coalesce(s.total, 0) AS log_total,
               coalesce(s.granted, 0) AS log_granted,
               coalesce(s.spent, 0) AS log_spent,
               coalesce(s.allocated, 0) AS log_allocated
        FROM public.user_credits uc
        LEFT JOIN (
            SELECT l.user_id,
                   sum(l.amount) AS total,
                   sum(l.amount) FILTER (WHERE l.type = 'credit') AS granted,
                   -sum(l.amount) FILTER (WHERE l.type IN ('debit', 'expire')) AS spent,
                   sum(l.amount) FILTER (WHERE l.type = 'credit'
                                         AND l.source IN ('signup', 'backfill', 'role_change'))
                       AS allocated
            FROM public.credit_usage_log l
            JOIN public.user_credits own
              ON own.user_id = l.user_id AND l.id > own.opened_after_log_id
            GROUP BY l.user_id
        ) s ON s.user_id = uc.user_id
    ),
    takes AS (
        SELECT t.lot_id, sum(t.amount) AS credits
        FROM public.credit_lot_takes t
        WHERE NOT EXISTS (SELECT FROM public.credit_usage_log r WHERE r.refund_of = t.log_id)
        GROUP BY t.lot_id
    ),
    expiries AS (
        SELECT e.lot_id, -sum(e.amount) AS credits
        FROM public.credit_usage_log e
        WHERE e.type = 'expire'
        GROUP BY e.lot_id
    ),
    lots AS (
        SELECT l.*, l.amount - l.taken - l.expired AS remaining,
               coalesce(t.credits, 0) AS taken_by_debits,
               coalesce(x.credits, 0) AS expired_by_entries
        FROM public.credit_lots l
        LEFT JOIN takes t ON t.lot_id = l.id
        LEFT JOIN expiries x ON x.lot_id = l.id
    ),
    lot_sums AS (
        SELECT uc.user_id, uc.tracked_credits, uc.remaining_credits - uc.tracked_credits AS untracked,
               coalesce(sum(l.remaining) FILTER (WHERE l.tracked), 0) AS tracked_held,
               coalesce(sum(l.amount) FILTER (WHERE NOT l.tracked), 0) AS untracked_amount
        FROM public.user_credits uc
        LEFT JOIN lots l ON l.user_id = uc.user_id
        GROUP BY uc.user_id, uc.tracked_credits, uc.remaining_credits
    ),
    pools AS (
        SELECT t.team_admin_id, count(*) AS members, u.role,
               coalesce(rc.team_member_limit, fallback.team_member_limit, 0) AS member_limit
        FROM public.team_credit_sharing t
        JOIN public.users u ON u.id = t.team_admin_id
        LEFT JOIN public.role_credits rc ON rc.role = u.role
        LEFT JOIN public.role_credits fallback ON fallback.role = 'member'
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
    SELECT s.user_id, format('used_credits %s <> sum of debits and expiries %s',
                             s.used_credits, s.log_spent)
    FROM sums s WHERE s.used_credits <> s.log_spent
    UNION ALL
    SELECT s.user_id, format('allocated_credits %s <> sum of role allocations %s',
                             s.allocated_credits, s.log_allocated)
    FROM sums s WHERE s.allocated_credits <> s.log_allocated
    UNION ALL
    SELECT s.user_id, format('negative balance: total %s, used %s, remaining %s',
                             s.total_credits, s.used_credits, s.remaining_credits)
    FROM sums s
    WHERE s.total_credits < 0 OR s.used_credits < 0 OR s.remaining_credits < 0
    UNION ALL
    SELECT r.user_id, format('refund entry %s does not reverse entry %s (%s)', r.id, r.refund_of,
                             CASE WHEN d.type <> 'debit' THEN 'not a debit'
                                  WHEN d.user_id <> r.user_id THEN 'another account'
                                  WHEN d.id <= uc.opened_after_log_id THEN 'an earlier account'
                                  WHEN r.type <> 'credit' THEN 'refund is not a credit'
                                  ELSE format('amount %s, debit %s', r.amount, d.amount)
                             END)
    FROM public.credit_usage_log r
    JOIN public.credit_usage_log d ON d.id = r.refund_of
    JOIN public.user_credits uc ON uc.user_id = r.user_id AND r.id > uc.opened_after_log_id
    WHERE d.type <> 'debit' OR d.user_id <> r.user_id OR r.type <> 'credit'
          OR r.amount <> -d.amount OR d.id <= uc.opened_after_log_id
    UNION ALL
    SELECT k.owner_user_id, format('idempotency key %s (%s) names entry %s, %s', quote_literal(k.idempotency_key),
                                   k.operation, k.log_id,
                                   CASE WHEN l.id IS NULL THEN 'which does not exist'
                                        ELSE 'which has another key or owner' END)
    FROM public.credit_idempotency_keys k
    LEFT JOIN public.credit_usage_log l ON l.id = k.log_id
    WHERE l.id IS NULL OR l.idempotency_key IS DISTINCT FROM k.idempotency_key
       OR coalesce(l.actor_user_id, l.user_id) <> k.owner_user_id
       OR (l.type = 'debit') <> (k.operation = 'debit')
    UNION ALL
    SELECT s.user_id, format('tracked_credits %s <> what its tracked lots hold %s',
                             s.tracked_credits, s.tracked_held)
    FROM lot_sums s WHERE s.tracked_credits <> s.tracked_held
    UNION ALL
    SELECT s.user_id, format('untracked credits %s exceed its untracked lots %s',
                             s.untracked, s.untracked_amount)
    FROM lot_sums s WHERE s.untracked > s.untracked_amount
    UNION ALL
    SELECT l.user_id, format('lot %s: taken %s + expired %s exceed amount %s',
                             l.id, l.taken, l.expired, l.amount)
    FROM lots l WHERE l.taken < 0 OR l.expired < 0 OR l.taken + l.expired::bigint > l.amount
    UNION ALL
    SELECT l.user_id, format('lot %s: taken %s <> %s taken by debits not refunded',
                             l.id, l.taken, l.taken_by_debits)
    FROM lots l WHERE l.tracked AND l.taken <> l.taken_by_debits
    UNION ALL
    SELECT l.user_id, format('lot %s: expired %s <> its expiry entries %s',
                             l.id, l.expired, l.expired_by_entries)
    FROM lots l WHERE l.expired <> l.expired_by_entries
    UNION ALL
    SELECT l.user_id, format('lot %s: %s', l.id,
                             CASE WHEN e.id IS NULL THEN format('entry %s does not exist', l.log_id)
                                  ELSE format('entry %s is not a credit of %s to this account',
                                              l.log_id, l.amount) END)
    FROM lots l
    LEFT JOIN public.credit_usage_log e ON e.id = l.log_id
    WHERE l.log_id IS NOT NULL
      AND (e.id IS NULL OR e.user_id <> l.user_id OR e.type <> 'credit' OR e.amount <> l.amount)
    UNION ALL
    SELECT p.team_admin_id, format('team pool has %s members; role %s allows %s',
                                   p.members, coalesce(quote_literal(p.role), 'NULL'),
                                   p.member_limit)
    FROM pools p WHERE p.member_limit > 0 AND p.members > p.member_limit
    UNION ALL
    SELECT t.team_member_id, format('member of the team of %s, whose role %s allows no team',
                                    t.team_admin_id, coalesce(quote_literal(p.role), 'NULL'))
    FROM public.team_credit_sharing t
    JOIN pools p ON p.team_admin_id = t.team_admin_id
    WHERE p.member_limit = 0
$$;

REVOKE EXECUTE ON FUNCTION verify_credit_integrity() FROM PUBLIC;

COMMENT ON FUNCTION verify_credit_integrity() IS
    'One row per broken invariant (balance vs ledger, allocations, negative values, bad refunds, keys, lots, pools over their cap or without a team role); no rows when all hold.';
