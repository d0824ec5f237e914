-- Workload 3, D: the least function keeping the debit contract
-- (bench/debit_contract_floor_function.sql), the same account lookup.
\set n random(1, :accounts)
SELECT bench_debit_contract_floor((SELECT id FROM bench_ids WHERE n = :n), 1);
