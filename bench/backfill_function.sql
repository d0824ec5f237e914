-- Workload 1, A: the shipped backfill (one call, every waiting user).
SELECT backfill_user_credits()
