-- A dense numbering of the accounts, so pgbench can pick a random one by
-- number: both the function script and the bare script look the uuid up the
-- same way, so the lookup costs them the same.
CREATE TABLE bench_ids AS
SELECT row_number() OVER (ORDER BY user_id)::int AS n, user_id AS id
FROM user_credits;
ALTER TABLE bench_ids ADD PRIMARY KEY (n);
VACUUM ANALYZE bench_ids;
VACUUM ANALYZE users;
VACUUM ANALYZE user_credits;
VACUUM ANALYZE credit_usage_log;
