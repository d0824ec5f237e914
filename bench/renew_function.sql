-- Workload 8, A of the renewal: one call, every due account.
SELECT renew_allowances(%(as_of)s)
