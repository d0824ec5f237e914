-- credits_internal holds everything that is not the interface: the helpers the
-- functions call by name, the trigger functions and the install record. The
-- interface (the tables, the functions callers call) lives in public.
-- PL/pgSQL resolves names when a statement first runs, and a function in a
-- schema others may CREATE in can be made ambiguous by an overload with an
-- extra defaulted parameter (foo(int) beside foo(int, int DEFAULT 0) is
-- "not unique"): no role but the owner may create anything in this schema,
-- so a call here always reaches ours.
CREATE SCHEMA credits_internal;
REVOKE ALL ON SCHEMA credits_internal FROM PUBLIC;

COMMENT ON SCHEMA credits_internal IS
    'credits-db''s internal helpers: only its owner may create objects here.';

-- What this installation of credits-db created, so that a downgrade removes
-- exactly that and never an object the host application owns.
CREATE TABLE credits_internal.install_record (
    singleton           boolean PRIMARY KEY DEFAULT true
                        CONSTRAINT install_record_singleton CHECK (singleton),
    created_users_table boolean NOT NULL,
    installed_at        timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON credits_internal.install_record FROM PUBLIC;
