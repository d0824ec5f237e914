-- Workload 7, B of the expiry sweep: the least SQL leaving the rows
-- expire_credits(%(as_of)s) leaves, in one statement: every lot due by then
-- that still holds credits gets expired = what it held, one expire entry per
-- lot (source expiry, the same description, lot_id, written in the sweep's
-- order: expiry, then id, so the entries get the same ids), and each account's
-- used_credits up and tracked_credits down by what its lots held (last_updated
-- too). Nothing else: no row locks taken first (the sweep's SKIP LOCKED pass),
-- no array of the chosen lots, no report.
WITH due AS MATERIALIZED (
    SELECT l.id, l.user_id, l.amount - l.taken - l.expired AS credits, l.expires_at
    FROM credit_lots l
    WHERE l.expires_at <= %(as_of)s AND l.taken < l.amount - l.expired
), lots AS (
    UPDATE credit_lots l SET expired = l.expired + d.credits
    FROM due d WHERE l.id = d.id
), accounts AS (
    UPDATE user_credits uc
    SET used_credits = uc.used_credits + a.credits,
        tracked_credits = uc.tracked_credits - a.credits,
        last_updated = now()
    FROM (SELECT d.user_id, sum(d.credits)::integer AS credits FROM due d GROUP BY d.user_id) AS a
    WHERE uc.user_id = a.user_id
)
INSERT INTO credit_usage_log (user_id, amount, type, source, description, lot_id)
SELECT d.user_id, -d.credits, 'expire', 'expiry',
       format('lot %%s expired at %%s', d.id, d.expires_at), d.id
FROM due d
ORDER BY d.expires_at, d.id
