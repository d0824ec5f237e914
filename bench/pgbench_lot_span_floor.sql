-- Workload 7, D (a floor, no target): the spanning debit of pgbench_lot_span.sql
-- (the same accounts) by the least function keeping the lot debit's contract,
-- lock then one statement (bench/debit_lot_span_floor_function.sql).
\set k :k + 1
\set n (:k - 1) * :clients + :client_id + 1
SELECT bench_lot_span_floor((SELECT id FROM bench_ids WHERE n = :n), 2, false);
