-- Workload 7: bench_ids (bench/bench_ids.sql) with each account's first two
-- tracked lots in spending order (lot1, lot2; lot2 NULL when it has one). The
-- package's scripts read only n and id, as in workload 3; the bare scripts
-- read the lot ids from the same row, so they write the same lot rows without
-- choosing them.
CREATE TABLE bench_ids AS
SELECT row_number() OVER (ORDER BY uc.user_id)::int AS n, uc.user_id AS id,
       (SELECT l.id FROM credit_lots l WHERE l.user_id = uc.user_id AND l.tracked
        ORDER BY l.priority, l.expires_at NULLS LAST, l.id LIMIT 1) AS lot1,
       (SELECT l.id FROM credit_lots l WHERE l.user_id = uc.user_id AND l.tracked
        ORDER BY l.priority, l.expires_at NULLS LAST, l.id OFFSET 1 LIMIT 1) AS lot2
FROM user_credits uc;
ALTER TABLE bench_ids ADD PRIMARY KEY (n);
VACUUM ANALYZE bench_ids;
VACUUM ANALYZE users;
VACUUM ANALYZE user_credits;
VACUUM ANALYZE credit_usage_log;
VACUUM ANALYZE credit_lots
