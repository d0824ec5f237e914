-- Refunds and idempotency keys, on the existing append-only ledger.
--
-- refund_of links a refund (a new 'credit' row, since the log is never edited)
-- to the debit it reverses. UNIQUE makes "refunded at most once" a property of
-- the table rather than of the code path that writes it; the column is nullable
-- without a default, so adding it does not rewrite the log.
--
-- Heavy lock, on purpose: building the UNIQUE index (and the new foreign key,
-- which has nothing to validate) holds ACCESS EXCLUSIVE on the log for one
-- scan of it. CONCURRENTLY cannot run inside the revision's transaction, and
-- an upgrade that half-applies is worse than a short pause of credit writes:
-- on a large ledger, run this upgrade in a quiet window.
ALTER TABLE credit_usage_log
    ADD COLUMN refund_of bigint
        -- squawk-ignore adding-foreign-key-constraint
        CONSTRAINT credit_usage_log_refund_of_fkey REFERENCES credit_usage_log (id)
        -- squawk-ignore disallowed-unique-constraint
        CONSTRAINT credit_usage_log_refund_of_unique UNIQUE;

COMMENT ON COLUMN credit_usage_log.refund_of IS
    'For a refund (source refund, type credit): the debit it reverses. Each debit is refunded at most once.';

-- The log's idempotency_key column records each entry's key for the audit
-- trail; the keys themselves live in their own table. Idempotency keys belong
-- to the caller who chose them, not to the account an
-- entry lands on. A team member's keyed pool debit is written to the admin's
-- account, but its key is the member's: no member can block or probe the
-- admin's keys, nor the admin a member's. A debit key is owned by the user who
-- spends (p_user_id of debit_credits); a grant key by the granted account, in
-- its own namespace, so a user cannot take the key of a grant an operator is
-- about to make. Within one (owner, operation) a key names one entry forever.
--
-- The primary key is what makes "never twice" hold: a keyed call inserts its
-- key in the statement that writes its entry, and a second call with the same
-- key either finds it (replay) or conflicts with it. At REPEATABLE READ and
-- SERIALIZABLE the conflict with a key its snapshot cannot see raises 40001,
-- so a retry, never a second entry.
--
-- A user's keys die with the user (ON DELETE CASCADE): a user re-created with
-- the same id starts with no keys, as it starts with a new account. A foreign
-- key, not a trigger, because its cascade also sees keys committed after the
-- deleting transaction's snapshot (at REPEATABLE READ that delete then fails
-- with 40001 instead of leaving the key behind). Every keyed call locks the
-- owner's users row FOR KEY SHARE before it writes, so the check finds the
-- lock already held and a concurrent delete waits for the call.
--
-- Its foreign key locks the host's users table against writes for the instant
-- of this CREATE TABLE (SHARE ROW EXCLUSIVE; nothing to scan).
CREATE TABLE credit_idempotency_keys (
    owner_user_id   uuid NOT NULL
                    CONSTRAINT credit_idempotency_keys_owner_fkey
                    REFERENCES users (id) ON DELETE CASCADE,
    operation       text NOT NULL
                    CONSTRAINT credit_idempotency_keys_operation_check
                    CHECK (operation IN ('debit', 'grant')),
    idempotency_key text NOT NULL,
    log_id          bigint NOT NULL,
    remaining_credits integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_idempotency_keys_pkey PRIMARY KEY (owner_user_id, operation, idempotency_key)
);

REVOKE ALL ON credit_idempotency_keys FROM PUBLIC;

COMMENT ON TABLE credit_idempotency_keys IS
    'One row per idempotency key: the caller who owns it (the spender for a debit, the account for a grant) and the entry it names.';
COMMENT ON COLUMN credit_idempotency_keys.remaining_credits IS
    'The remaining_credits the keyed call answered, which a replay answers again (NULL for keys written before revision 0007: rebuilt from the log).';
