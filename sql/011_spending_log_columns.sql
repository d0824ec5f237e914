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

-- An idempotency key is scoped to the account the entry was written to: the
-- index both finds a replay and guarantees that two racing calls cannot both
-- write. Rows without a key (the common case) are not indexed at all.
-- Same quiet window as above.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX credit_usage_log_idempotency_key_idx
    ON credit_usage_log (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A member's keyed debit of a team pool is written to the admin's account with
-- the member as actor. Finding it again by the member (the replay check) must
-- not depend on the member still being in that pool, or a retry after leaving
-- the team would debit a second time.
-- Same quiet window as above.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_actor_idempotency_key_idx
    ON credit_usage_log (actor_user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND actor_user_id IS NOT NULL;

COMMENT ON COLUMN credit_usage_log.refund_of IS
    'For a refund (source refund, type credit): the debit it reverses. Each debit is refunded at most once.';
