-- Workload 3, C: the bare statement inside the least PL/pgSQL function
-- (bench/debit_floor_function.sql), the same account lookup.
\set n random(1, :accounts)
SELECT bench_debit_floor((SELECT id FROM bench_ids WHERE n = :n), 1);
