-- Workload 8 (issue 16), the renewal's accounts: %(n)s members signed up in
-- one INSERT ... SELECT, so the signup trigger allocates each its allowance as
-- it does any signup (run after 'member' was given a renewal_interval: the
-- balance's period_ends_at and period_allowance, the signup lot expiring at the
-- period's end, tracked).
INSERT INTO users (email, role)
SELECT 'r' || g || '@bench.invalid', 'member'
FROM generate_series(1, %(n)s) AS g
