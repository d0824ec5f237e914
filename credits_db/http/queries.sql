-- Reads used by the HTTP API (credits_db/http/) that the core API has no call for.
-- Sections are named "-- name: <query>" and loaded with credits_db._queries.parse.

-- name: team_member_limit
-- How many members the user's role allows in their pool, as add_team_member counts
-- it: a NULL or unknown role has the member row's limit; 0 for a missing user.
SELECT coalesce((SELECT coalesce(rc.team_member_limit, fallback.team_member_limit, 0)
                 FROM users AS u
                 LEFT JOIN role_credits AS rc ON rc.role = u.role
                 LEFT JOIN role_credits AS fallback ON fallback.role = 'member'
                 WHERE u.id = %(user_id)s), 0);

-- name: is_team_member
-- Whether the member is in the admin's pool now: POST /api/credits/team-members
-- answers 200 instead of 201 when it was already.
SELECT EXISTS (SELECT 1 FROM public.team_credit_sharing
               WHERE team_admin_id = %(team_admin_id)s::uuid
                 AND team_member_id = %(team_member_id)s::uuid);

-- ---------------------------------------------------------------------------
-- The admin page (credits_db/http/admin.py): charts, the last backfill, the user
-- lookup. users may be the host's own table: only id and role are required, so
-- other columns are read through to_jsonb(u) ->> 'email' (NULL when absent) and
-- only the lookup by email names users.email (42703 when the column is missing).

-- name: admin_daily_ledger
-- Allocations (credits) and spending (debits) per UTC day, source and type, for
-- the last %(days)s days including today; "today" is the server's UTC date, so the
-- page draws the same window the sums cover. Reads the window's log rows only
-- by created_at: without an index on it this is a scan of the log.
SELECT jsonb_build_object(
    'today', (now() AT TIME ZONE 'UTC')::date,
    'rows', coalesce(jsonb_agg(jsonb_build_object(
                'day', d.day, 'source', d.source, 'type', d.type, 'credits', d.credits)
                ORDER BY d.day, d.type, d.source), '[]'::jsonb))
FROM (
    SELECT (l.created_at AT TIME ZONE 'UTC')::date AS day, l.source, l.type,
           sum(l.amount::bigint) AS credits
    FROM credit_usage_log AS l
    WHERE l.created_at >= ((now() AT TIME ZONE 'UTC')::date - (%(days)s::integer - 1))::timestamp
                          AT TIME ZONE 'UTC'
    GROUP BY 1, 2, 3
) AS d;

-- name: admin_fullest_pools
-- The %(limit)s team pools with the most members (then the most credits left):
-- the admin, their email if users has one, members, the seat limit of their role
-- (as add_team_member counts it) and the pool's remaining credits.
SELECT coalesce(jsonb_agg(jsonb_build_object(
           'team_admin_id', p.team_admin_id, 'email', to_jsonb(u) ->> 'email',
           'members', p.members,
           'member_limit', coalesce(rc.team_member_limit, fallback.team_member_limit, 0),
           'remaining_credits', coalesce(uc.remaining_credits, 0))
           ORDER BY p.members DESC, coalesce(uc.remaining_credits, 0) DESC, p.team_admin_id),
       '[]'::jsonb)
FROM (
    SELECT t.team_admin_id, count(*) AS members
    FROM team_credit_sharing AS t
    GROUP BY t.team_admin_id
    ORDER BY count(*) DESC, t.team_admin_id
    LIMIT %(limit)s
) AS p
JOIN users AS u ON u.id = p.team_admin_id
LEFT JOIN role_credits AS rc ON rc.role = u.role
LEFT JOIN role_credits AS fallback ON fallback.role = 'member'
LEFT JOIN user_credits AS uc ON uc.user_id = p.team_admin_id;

-- name: admin_last_backfill
-- What the ledger says about backfills (source 'backfill': the backfill, and an
-- account opened by a grant or a role change): the newest such row's time, how
-- many there are and the credits they allocated. Runs are not recorded as such,
-- so these are all-time totals. A scan of the log (no index on source).
SELECT jsonb_build_object('last_at', max(l.created_at), 'allocations', count(*),
                          'credits', coalesce(sum(l.amount::bigint), 0))
FROM credit_usage_log AS l
WHERE l.source = 'backfill';

-- name: admin_user_id_by_email
-- The id of the user with this email (users.email must exist: 42703 otherwise).
SELECT (SELECT u.id FROM users AS u WHERE u.email = %(email)s);

-- name: admin_user_lookup
-- One user for the lookup page: id, role, email and created_at if users has them,
-- the role's allocation (a NULL or unknown role falls back to member), the balance
-- row, the pool they belong to, and their own pool's members. NULL for no user.
SELECT (
    SELECT jsonb_build_object(
        'id', u.id, 'role', u.role,
        'email', to_jsonb(u) ->> 'email', 'created_at', to_jsonb(u) ->> 'created_at',
        'fallback_role', rc.role IS NULL,
        'role_credits', coalesce(rc.credits, fallback.credits, 0),
        'member_limit', coalesce(rc.team_member_limit, fallback.team_member_limit, 0),
        'balance', (SELECT to_jsonb(b) FROM (
                        SELECT uc.total_credits, uc.used_credits, uc.remaining_credits,
                               uc.allocated_credits, uc.created_at, uc.last_updated
                        FROM user_credits AS uc WHERE uc.user_id = u.id) AS b),
        'member_of', (SELECT jsonb_build_object(
                          'team_admin_id', t.team_admin_id,
                          'email', to_jsonb(a) ->> 'email', 'since', t.created_at,
                          'pool_remaining', (SELECT uc.remaining_credits FROM user_credits AS uc
                                             WHERE uc.user_id = t.team_admin_id))
                      FROM team_credit_sharing AS t JOIN users AS a ON a.id = t.team_admin_id
                      WHERE t.team_member_id = u.id),
        'members', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                               'team_member_id', t.team_member_id,
                               'email', to_jsonb(m) ->> 'email', 'seat', t.seat)
                               ORDER BY t.seat), '[]'::jsonb)
                    FROM team_credit_sharing AS t JOIN users AS m ON m.id = t.team_member_id
                    WHERE t.team_admin_id = u.id))
    FROM users AS u
    LEFT JOIN role_credits AS rc ON rc.role = u.role
    LEFT JOIN role_credits AS fallback ON fallback.role = 'member'
    WHERE u.id = %(user_id)s
);

-- name: admin_expiring_lots
-- The lots that still hold credits and expire within %(days)s days, on
-- credit_lots_open_expiry_idx (the WHERE repeats its predicate so that the
-- planner may use it; a lot with an expiry is tracked, so what it holds is
-- amount - taken - expired):
--   lapsed:  expired already but not swept (expire_credits() has not run since):
--            debits do not spend them, but the balances still count them;
--   coming:  expiring from now to %(days)s days on, in total and per UTC day,
--            one scan for both (the empty grouping set is the total);
--   soonest: the %(limit)s coming first, with their account (an index scan that
--            stops after them).
-- Reads every open lot of the window: with allowances renewing monthly, that is
-- about one lot per renewing account.
SELECT jsonb_build_object(
    'as_of', now(),
    'days', %(days)s::integer,
    'lapsed', (
        SELECT jsonb_build_object('lots', count(*),
                                  'credits', coalesce(sum(l.amount - l.taken - l.expired), 0),
                                  'accounts', count(DISTINCT l.user_id),
                                  'oldest', min(l.expires_at))
        FROM credit_lots AS l
        WHERE l.expires_at IS NOT NULL AND l.taken < l.amount - l.expired
          AND l.expires_at <= now()),
    'coming', (
        SELECT jsonb_build_object(
            'lots', coalesce(max(w.lots) FILTER (WHERE w.day IS NULL), 0),
            'credits', coalesce(max(w.credits) FILTER (WHERE w.day IS NULL), 0),
            'accounts', coalesce(max(w.accounts) FILTER (WHERE w.day IS NULL), 0),
            'by_day', coalesce(jsonb_agg(jsonb_build_object(
                          'day', w.day, 'lots', w.lots, 'credits', w.credits,
                          'accounts', w.accounts) ORDER BY w.day)
                          FILTER (WHERE w.day IS NOT NULL), '[]'::jsonb))
        FROM (
            SELECT (l.expires_at AT TIME ZONE 'UTC')::date AS day, count(*) AS lots,
                   sum(l.amount - l.taken - l.expired) AS credits,
                   count(DISTINCT l.user_id) AS accounts
            FROM credit_lots AS l
            WHERE l.expires_at IS NOT NULL AND l.taken < l.amount - l.expired
              AND l.expires_at > now()
              AND l.expires_at <= now() + make_interval(days => %(days)s::integer)
            GROUP BY GROUPING SETS (((l.expires_at AT TIME ZONE 'UTC')::date), ())
        ) AS w),
    'soonest', (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'lot_id', s.id, 'user_id', s.user_id, 'email', to_jsonb(u) ->> 'email',
                   'role', u.role, 'source', s.source, 'amount', s.amount,
                   'remaining', s.remaining, 'expires_at', s.expires_at)
                   ORDER BY s.expires_at, s.id), '[]'::jsonb)
        FROM (
            SELECT l.id, l.user_id, l.source, l.amount,
                   l.amount - l.taken - l.expired AS remaining, l.expires_at
            FROM credit_lots AS l
            WHERE l.expires_at IS NOT NULL AND l.taken < l.amount - l.expired
              AND l.expires_at > now()
              AND l.expires_at <= now() + make_interval(days => %(days)s::integer)
            ORDER BY l.expires_at, l.id
            LIMIT %(limit)s
        ) AS s
        LEFT JOIN users AS u ON u.id = s.user_id));

-- name: admin_renewals
-- Renewals, as renew_allowances() finds them (an account renews by its user's
-- role, the member row for a NULL or unknown one), on user_credits_period_ends_idx:
--   due:     the period ended and the role renews, but renew_allowances() has not
--            run since: the account has no allowance for its current period yet;
--   stopped: the period ended, but the role no longer renews (the renewal skips it);
--   coming:  the periods ending from now to %(days)s days on whose role renews,
--            and the %(limit)s soonest with their account;
--   roles:   every role_credits row with its renewal (NULL interval: given once).
-- Reads the accounts whose period ends within the window (about a quarter of the
-- renewing accounts for a week of monthly periods) and all role_credits rows.
WITH ending AS MATERIALIZED (
    SELECT uc.user_id, uc.period_ends_at, u.role AS user_role, to_jsonb(u) ->> 'email' AS email,
           r.role, r.credits, r.renewal_interval IS NOT NULL AS renews
    FROM user_credits AS uc
    JOIN users AS u ON u.id = uc.user_id
    LEFT JOIN role_credits AS rc ON rc.role = u.role
    JOIN role_credits AS r ON r.role = coalesce(rc.role, 'member')
    WHERE uc.period_ends_at IS NOT NULL
      AND uc.period_ends_at <= now() + make_interval(days => %(days)s::integer)
)
SELECT jsonb_build_object(
    'as_of', now(),
    'days', %(days)s::integer,
    'due', (SELECT jsonb_build_object('accounts', count(*),
                                      'credits', coalesce(sum(e.credits), 0),
                                      'oldest', min(e.period_ends_at))
            FROM ending AS e WHERE e.renews AND e.period_ends_at <= now()),
    'stopped', (SELECT count(*) FROM ending AS e
                WHERE NOT e.renews AND e.period_ends_at <= now()),
    'coming', (SELECT jsonb_build_object('accounts', count(*),
                                         'credits', coalesce(sum(e.credits), 0))
               FROM ending AS e WHERE e.renews AND e.period_ends_at > now()),
    'next', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'user_id', n.user_id, 'email', n.email, 'role', n.user_role,
                        'renews_as', n.role, 'credits', n.credits,
                        'period_ends_at', n.period_ends_at)
                        ORDER BY n.period_ends_at, n.user_id), '[]'::jsonb)
             FROM (SELECT e.* FROM ending AS e
                   WHERE e.renews AND e.period_ends_at > now()
                   ORDER BY e.period_ends_at, e.user_id
                   LIMIT %(limit)s) AS n),
    'roles', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'role', rc.role, 'credits', rc.credits,
                         'renewal_interval', rc.renewal_interval::text,
                         'rollover_cap', rc.rollover_cap) ORDER BY rc.role), '[]'::jsonb)
              FROM role_credits AS rc));
