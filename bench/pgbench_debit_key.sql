-- Workload 3 with an idempotency key on every call (unique per call).
\set n random(1, :accounts)
\set k random(1, 1000000000)
SELECT debit_credits((SELECT id FROM bench_ids WHERE n = :n), 1, 'usage', NULL,
                     cast(:client_id AS text) || '-' || cast(:k AS text));
