-- Workload 7 (issue 16), the accounts of the debit that spans two of five
-- lots: each backfilled account gets five expiring lots through
-- grant_credits(), one day apart, the soonest holding 1 credit and the others
-- 10. A debit of 2 on a fresh account takes 1 from the soonest (emptying it)
-- and 1 from the next, and reads all five (and the untracked credits) to
-- decide. Each account is debited once (the pgbench scripts walk the accounts
-- in order), so every debit meets this layout.
SELECT count(grant_credits(uc.user_id, CASE WHEN g = 1 THEN 1 ELSE 10 END, 'promo', NULL, NULL,
                           now() + interval '10 years' + g * interval '1 day'))
FROM user_credits uc, generate_series(1, 5) AS g
