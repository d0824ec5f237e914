-- Workload 3 with a key, C: the least function keeping the keyed debit contract
-- (bench/debit_contract_floor_function.sql: the key stored in
-- credit_idempotency_keys and looked up there), a key unique per call as in A.
\set n random(1, :accounts)
\set k random(1, 1000000000)
SELECT bench_debit_key_contract_floor((SELECT id FROM bench_ids WHERE n = :n), 1,
                                      cast(:client_id AS text) || '-' || cast(:k AS text));
