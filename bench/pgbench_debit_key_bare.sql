-- Workload 3 with a key, bare: the debit, its log row (the key recorded in it,
-- as the package records it for the audit trail) and the key's row in
-- credit_idempotency_keys (owner = the spender, operation 'debit', the log id,
-- the remaining balance the call answered: revision 0007), one statement, its
-- primary key maintained. No replay lookup,
-- no advisory lock, no ON CONFLICT: the durable work of a new key, nothing else.
\set n random(1, :accounts)
\set k random(1, 1000000000)
WITH d AS (
    UPDATE user_credits
    SET used_credits = used_credits + 1, last_updated = now()
    WHERE user_id = (SELECT id FROM bench_ids WHERE n = :n) AND remaining_credits >= 1
    RETURNING user_id, remaining_credits
), l AS (
    INSERT INTO credit_usage_log (user_id, amount, type, source, idempotency_key)
    SELECT user_id, -1, 'debit', 'usage', cast(:client_id AS text) || '-' || cast(:k AS text)
    FROM d
    RETURNING id, user_id, idempotency_key
)
INSERT INTO credit_idempotency_keys (owner_user_id, operation, idempotency_key, log_id,
                                     remaining_credits)
SELECT l.user_id, 'debit', l.idempotency_key, l.id, d.remaining_credits FROM l JOIN d USING (user_id);
