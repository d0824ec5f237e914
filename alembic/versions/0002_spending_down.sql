-- credits-db 0002 downgrade: removes what 0002 created and nothing else, in
-- reverse order. The ledger keeps every row, refunds included; only the
-- refund_of link and the idempotency indexes go with the columns 0002 added
-- (idempotency_key itself belongs to 0001 and stays).
DROP FUNCTION verify_credit_integrity();
DROP TRIGGER users_topup_credits_on_role_change ON users;
DROP FUNCTION credits_topup_on_role_change();
DROP FUNCTION get_credit_balance(uuid);
DROP FUNCTION refund_credits(bigint, text);
DROP FUNCTION grant_credits(uuid, integer, text, text, text);
DROP FUNCTION debit_credits(uuid, integer, text, text, text);
DROP FUNCTION remove_team_member(uuid, uuid);
DROP FUNCTION add_team_member(uuid, uuid);
DROP FUNCTION credits_replayed_result(credit_usage_log);
DROP INDEX credit_usage_log_actor_idempotency_key_idx;
DROP INDEX credit_usage_log_idempotency_key_idx;
ALTER TABLE credit_usage_log DROP COLUMN refund_of;
DROP TABLE team_credit_sharing;
