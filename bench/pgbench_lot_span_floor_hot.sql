-- Workload 7, E (a floor, no target): D with the hot path's UPDATE first, which
-- finds tracked credits and writes nothing (bench/debit_lot_span_floor_function.sql).
\set k :k + 1
\set n (:k - 1) * :clients + :client_id + 1
SELECT bench_lot_span_floor((SELECT id FROM bench_ids WHERE n = :n), 2, true);
