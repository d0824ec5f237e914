-- The statements the Python API sends: each is one call of a SQL function,
-- so every rule lives in the database and the wrapper stays thin.
-- Sections are named "-- name: <query>" and loaded by credits_db/_queries.py.

-- name: backfill
-- Allocate credits to users who have none (or report what would happen).
SELECT backfill_user_credits(p_dry_run => %(dry_run)s, p_limit => %(limit)s);

-- name: allocation_report
-- Users with and without credits, and credits per role.
SELECT credit_allocation_report();
