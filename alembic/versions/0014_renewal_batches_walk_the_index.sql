-- credits-db 0014: a batch of renew_allowances() walks the period index
-- (frozen; see sql/ for current definitions).
-- renew_allowances(p_limit => N) locks its batch with ORDER BY period_ends_at,
-- user_id LIMIT N FOR NO KEY UPDATE SKIP LOCKED. On an index of period_ends_at
-- alone every due account was joined and sorted before the limit (the row
-- locks sit between the sort and the LIMIT, so no top-N sort): each batch cost
-- the whole backlog, 20 batches of 50,000 about twice one call. On
-- (period_ends_at, user_id) the batch is an index walk that stops after N rows
-- (docs/performance.md, "Revision 0013", measured on 200,000 accounts: 440 ms
-- to 38 ms for a batch of 5,000). Same name, same predicate; the admin page's
-- renewals read uses it as before.
--
-- Built inside the revision's transaction, not CONCURRENTLY: writes of
-- user_credits wait while it builds (about a second per million balance rows
-- with a period), as for the other indexes the revisions build; upgrade in a
-- quiet moment.
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX user_credits_period_ends_idx;
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX user_credits_period_ends_idx
    ON user_credits (period_ends_at, user_id)
    WHERE period_ends_at IS NOT NULL;
