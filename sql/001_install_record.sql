-- What this installation of credits-db created, so that a downgrade removes
-- exactly that and never an object the host application owns.
CREATE TABLE credits_db_install (
    singleton           boolean PRIMARY KEY DEFAULT true
                        CONSTRAINT credits_db_install_singleton CHECK (singleton),
    created_users_table boolean NOT NULL,
    installed_at        timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON credits_db_install FROM PUBLIC;
