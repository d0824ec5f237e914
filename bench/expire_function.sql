-- Workload 7, A of the expiry sweep: one call, every due lot.
SELECT expire_credits(%(as_of)s)
