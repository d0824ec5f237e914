-- Workload 4 afterwards: no overdraft anywhere, the ledger agrees with every
-- balance, and the pool's debits add up.
SELECT (SELECT count(*) FROM user_credits WHERE remaining_credits < 0
                                            OR used_credits > total_credits) AS overdrawn,
       (SELECT count(*) FROM verify_credit_integrity()) AS integrity_problems,
       (SELECT remaining_credits FROM user_credits
        WHERE user_id = (SELECT id FROM bench_pool)) AS pool_remaining
