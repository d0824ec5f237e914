-- Workload 7, B of the untracked debit: pgbench_debit.sql through revision
-- 0009's debit_credits() (bench_debit_credits_0009, bench/debit_0009_function.sql),
-- the same account lookup.
\set n random(1, :accounts)
SELECT bench_debit_credits_0009((SELECT id FROM bench_ids WHERE n = :n), 1);
