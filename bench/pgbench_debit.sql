-- Workload 3, A: one debit of 1 credit from a random own account, through the function.
\set n random(1, :accounts)
SELECT debit_credits((SELECT id FROM bench_ids WHERE n = :n), 1);
