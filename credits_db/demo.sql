-- Sample data for `credits-db demo` and `credits-db serve` (credits_db/demo.py),
-- loaded by name like queries.sql.

-- name: create_host_users
-- The users table a host application would already have before installing credits-db.
CREATE TABLE users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email      text UNIQUE,
    role       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- name: add_users
-- One user per role in %(roles)s, emails prefixed with %(prefix)s; returns (role, id).
INSERT INTO users (email, role)
SELECT format('%%s-%%s@example.com', %(prefix)s::text, n), r
FROM unnest(%(roles)s::text[]) WITH ORDINALITY AS t(r, n)
RETURNING role, id;

-- ---------------------------------------------------------------------------
-- A month of renewals (`credits-db demo` only, on its throwaway database). The
-- "month later" is p_as_of: renew_allowances() and expire_credits() may run as
-- of any time, so nothing waits for a clock.

-- name: renew_role
-- Make %(role)s renew every %(interval)s with a rollover cap (the trigger on
-- role_credits schedules its accounts); returns the interval as PostgreSQL writes it.
UPDATE role_credits
SET renewal_interval = %(interval)s::interval, rollover_cap = %(rollover_cap)s
WHERE role = %(role)s
RETURNING renewal_interval::text;

-- name: sign_up
-- One user of %(role)s signing up (the trigger allocates the period's allowance).
INSERT INTO users (email, role) VALUES (%(email)s, %(role)s) RETURNING id;

-- name: period
-- The account's balance and current allowance period.
SELECT jsonb_build_object('remaining_credits', uc.remaining_credits,
                          'period_allowance', uc.period_allowance,
                          'period_ends_at', uc.period_ends_at)
FROM user_credits AS uc
WHERE uc.user_id = %(user_id)s;

-- name: grant_expiring
-- %(amount)s credits that expire %(lasts)s from now; returns the expiry (now() is
-- the grant's, one statement).
SELECT now() + %(lasts)s::interval
FROM grant_credits(%(user_id)s, %(amount)s, 'promo', %(description)s, NULL,
                   p_expires_at => now() + %(lasts)s::interval);

-- name: renew_later
-- The renewal as of %(later)s from now.
SELECT renew_allowances(p_as_of => now() + %(later)s::interval);

-- name: expire_later
-- The expiry sweep as of %(later)s from now.
SELECT expire_credits(p_as_of => now() + %(later)s::interval);

-- name: entries
-- The account's ledger, oldest first.
SELECT coalesce(jsonb_agg(jsonb_build_object('amount', l.amount, 'type', l.type,
                                             'source', l.source, 'description', l.description)
                          ORDER BY l.id), '[]'::jsonb)
FROM credit_usage_log AS l
WHERE l.user_id = %(user_id)s;
