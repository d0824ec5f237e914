-- Workload 7 (issue 16), the accounts of the one-lot debit: each backfilled
-- account gets one expiring lot through grant_credits(), far in the future and
-- large enough that no run empties it, so every debit of 1 takes from it (a
-- lot with an expiry is spent before the untracked credits, which never
-- expire).
SELECT count(grant_credits(uc.user_id, 1000000, 'promo', NULL, NULL,
                           now() + interval '10 years'))
FROM user_credits uc
