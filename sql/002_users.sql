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
        INSERT INTO credits_internal.install_record (created_users_table) VALUES (true);
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

    INSERT INTO credits_internal.install_record (created_users_table) VALUES (false);
END
$install_users$;
