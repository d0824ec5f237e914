-- Every allocation and spend, signed: credits positive, debits and expiries
-- (credits of a lot that ran out unspent, 026) negative, never 0.
-- There is deliberately no foreign key to users: the log is the audit trail and
-- outlives a deleted user (the user's balance row goes with the user, the log
-- rows stay, and the integrity check only compares accounts that still exist).
CREATE TABLE credit_usage_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid NOT NULL,
    actor_user_id   uuid,
    amount          integer NOT NULL,
    type            text NOT NULL
                    CONSTRAINT credit_usage_log_type_check
                    CHECK (type IN ('credit', 'debit', 'expire')),
    source          text NOT NULL,
    description     text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_usage_log_amount_sign CHECK (
        (type = 'credit' AND amount > 0) OR (type IN ('debit', 'expire') AND amount < 0)
    )
);

-- "History of one account, newest first" is an index range scan, never a sort.
-- The table is created empty just above: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_account_history_idx
    ON credit_usage_log (user_id, created_at DESC, id DESC);

COMMENT ON TABLE credit_usage_log IS
    'Append-only ledger of credits (amount > 0), debits and expiries (amount < 0) per account.';

-- A new account is opened after every entry that exists when it is inserted
-- (see 004): the watermark is drawn from the log's own sequence.
ALTER TABLE user_credits
    ALTER COLUMN opened_after_log_id SET DEFAULT nextval('credit_usage_log_id_seq');
