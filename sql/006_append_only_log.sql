-- A ledger is corrected by a new entry, never by editing an old one. The guard
-- fires per statement, so it costs nothing on INSERT and refuses UPDATE, DELETE
-- and TRUNCATE from every role, including the table owner.
CREATE FUNCTION credits_internal.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'credit_usage_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'CR010',
              HINT = 'Correct an entry with a new one (a refund or a grant).';
END
$$;

CREATE TRIGGER credit_usage_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON credit_usage_log
    FOR EACH STATEMENT EXECUTE FUNCTION credits_internal.refuse_log_change();

REVOKE EXECUTE ON FUNCTION credits_internal.refuse_log_change() FROM PUBLIC;
