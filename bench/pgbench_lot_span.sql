-- Workload 7, A: a debit of 2 through the function on the next fresh account of
-- five lots (bench/lots_grant_five.sql): it takes 1 from the soonest lot and 1
-- from the next. Each client walks its own accounts (:k counts its
-- transactions, from -D k=0), so no account is debited twice in a run.
\set k :k + 1
\set n (:k - 1) * :clients + :client_id + 1
SELECT debit_credits((SELECT id FROM bench_ids WHERE n = :n), 2);
