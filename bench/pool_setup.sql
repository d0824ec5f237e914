-- Workload 4: one team admin with a huge balance and 4 members whose own
-- accounts are empty, so every debit of theirs goes to the pool.
-- bench_ids holds the 4 members (n = 1..4); bench_pool the admin.
CREATE TABLE bench_pool AS
WITH admin AS (
    INSERT INTO users (email, role) VALUES ('pool-admin@bench.invalid', 'team_admin')
    RETURNING id
)
SELECT id FROM admin;
CREATE TABLE bench_ids AS
WITH members AS (
    INSERT INTO users (email, role)
    SELECT 'pool-member-' || g || '@bench.invalid', 'member' FROM generate_series(1, 4) g
    RETURNING id, email
)
SELECT row_number() OVER (ORDER BY email)::int AS n, id FROM members;
ALTER TABLE bench_ids ADD PRIMARY KEY (n);
SELECT grant_credits((SELECT id FROM bench_pool), 1000000000, 'bench');
SELECT add_team_member((SELECT id FROM bench_pool), id) FROM bench_ids;
SELECT debit_credits(b.id, uc.remaining_credits, 'bench')
FROM bench_ids b JOIN user_credits uc ON uc.user_id = b.id;
VACUUM ANALYZE;
