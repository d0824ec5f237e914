-- Workload 4, A: a member whose own account is empty debits the team pool.
\set m random(1, 4)
SELECT debit_credits((SELECT id FROM bench_ids WHERE n = :m), 1);
