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
