-- Workload 6: the statements whose plans are written to bench/plans/ (with
-- auto_explain, nested statements included). One statement per "-- name:".
-- name: debit_credits
SELECT debit_credits((SELECT id FROM bench_ids WHERE n = 1), 1)
-- name: debit_credits_keyed
SELECT debit_credits((SELECT id FROM bench_ids WHERE n = 2), 1, 'usage', NULL, 'plan-key-' || clock_timestamp()::text)
-- name: debit_bare
WITH d AS (UPDATE user_credits SET used_credits = used_credits + 1, last_updated = now() WHERE user_id = (SELECT id FROM bench_ids WHERE n = 3) AND remaining_credits >= 1 RETURNING user_id) INSERT INTO credit_usage_log (user_id, amount, type, source) SELECT user_id, -1, 'debit', 'usage' FROM d
-- name: signup_trigger
INSERT INTO users (email, role) SELECT gen_random_uuid()::text || '@plan.invalid', (ARRAY['member', NULL, 'intern'])[1 + g %% 3] FROM generate_series(1, 1000) g
