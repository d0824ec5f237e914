-- Workload 6: grow the ledger cheaply. Pairs of +1 credit / -1 debit per
-- account keep remaining_credits = sum(amount); total_credits = sum(credits)
-- no longer holds in this scratch database (accepted: it is never verified).
-- %(pairs)s pairs are spread over the accounts of bench_ids, interleaved.
INSERT INTO credit_usage_log (user_id, amount, type, source, description)
SELECT b.id, s.amount, s.type, 'bench', NULL
FROM generate_series(0, %(pairs)s - 1) AS g
JOIN bench_ids b ON b.n = 1 + g %% (SELECT count(*) FROM bench_ids)
CROSS JOIN (VALUES (1, 'credit'), (-1, 'debit')) AS s(amount, type)
