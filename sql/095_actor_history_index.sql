-- "Everything this user caused" (a member's spending from their team pool, in
-- the billing overview and under row-level security) is the actor's history,
-- newest first: a range scan of this index, never a scan of the ledger.
-- Building it blocks writes to the log for one scan; see 011 on quiet windows.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_usage_log_actor_history_idx
    ON credit_usage_log (actor_user_id, created_at DESC, id DESC)
    WHERE actor_user_id IS NOT NULL;
