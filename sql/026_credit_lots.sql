-- Lots: every credit an account receives (signup, backfill, grant, role
-- change top-up) is a lot with an amount, an optional expiry and a priority.
-- A debit spends lots by priority (lower first), then soonest expiry (none
-- last), then oldest; a lot's credits still unspent at its expiry expire.
--
-- Two kinds of lot, so that an account that never uses expiry never pays for
-- it (docs/sql-contract.md, "Lots"):
--   * tracked lots (an expiry, or a priority other than the default 50): each
--     keeps what was taken from it and what expired, and every debit that
--     spends one records how much it took (credit_lot_takes), so a refund
--     gives back to exactly those lots and an expiry is exact to the credit;
--   * untracked lots (no expiry, the default priority: every role allocation
--     today): interchangeable, since none of them ever expires. Their credits
--     are the account's remaining_credits minus tracked_credits, spent oldest
--     first; taken and expired stay 0 and what is left of each is derived
--     (get_credit_lots()). A debit of an account without tracked credits is
--     the one-statement debit it always was: no lot row is read or written.
--
-- tracked_credits on the balance row is what its tracked lots hold
-- (amount - taken - expired, summed, expired-but-not-swept lots included):
-- debits read no lot unless it is above 0. Every writer of an account's lots
-- locks its user_credits row first and changes tracked_credits in the same
-- transaction, so the row lock orders all lot writes of one account.
ALTER TABLE user_credits
    ADD COLUMN tracked_credits integer NOT NULL DEFAULT 0
        CONSTRAINT user_credits_tracked_within_remaining
        CHECK (tracked_credits >= 0 AND tracked_credits <= total_credits - used_credits);

COMMENT ON COLUMN user_credits.tracked_credits IS
    'Credits held in tracked lots (an expiry or a non-default priority), expired but not yet swept included; the rest of remaining_credits is in untracked lots.';

-- An expiry entry (type expire) names the lot whose credits expired; a
-- nullable column without a default, so adding it does not rewrite the log.
ALTER TABLE credit_usage_log ADD COLUMN lot_id bigint;

COMMENT ON COLUMN credit_usage_log.lot_id IS
    'For an expiry (type expire): the lot whose unspent credits expired.';

-- The lots die with the account (the balance row): a user re-created with the
-- same id opens a new account with new lots. log_id is the entry that created
-- the lot (NULL for the opening lot the revision that introduced lots gave
-- every existing account: its amount is the account's total_credits then).
CREATE TABLE credit_lots (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    uuid NOT NULL
               CONSTRAINT credit_lots_user_id_fkey
               REFERENCES user_credits (user_id) ON DELETE CASCADE,
    log_id     bigint,
    source     text NOT NULL,
    amount     integer NOT NULL CONSTRAINT credit_lots_amount_positive CHECK (amount > 0),
    taken      integer NOT NULL DEFAULT 0,
    expired    integer NOT NULL DEFAULT 0,
    expires_at timestamptz,
    priority   integer NOT NULL DEFAULT 50
               CONSTRAINT credit_lots_priority_range CHECK (priority BETWEEN 0 AND 100),
    tracked    boolean GENERATED ALWAYS AS (expires_at IS NOT NULL OR priority <> 50) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_lots_taken_expired_within_amount
        CHECK (taken >= 0 AND expired >= 0 AND taken <= amount - expired),
    CONSTRAINT credit_lots_untracked_untouched
        CHECK (tracked OR (taken = 0 AND expired = 0))
);

-- The spending order of one account's lots, and the cascade from its balance row.
-- The table is created empty just above: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_lots_spending_order_idx
    ON credit_lots (user_id, priority, expires_at, id);

-- The expiry sweep reads only lots that still hold credits.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_lots_open_expiry_idx
    ON credit_lots (expires_at, id)
    WHERE expires_at IS NOT NULL AND taken < amount - expired;

COMMENT ON TABLE credit_lots IS
    'One row per credit received: amount, taken (spent), expired, expiry, priority. Untracked lots (no expiry, priority 50) are spent oldest first as one; their remainder is derived (get_credit_lots()).';
COMMENT ON COLUMN credit_lots.log_id IS
    'The entry that created the lot; NULL for an opening lot (an account''s total_credits when lots were introduced).';

-- What each debit took from each tracked lot (an untracked share is the
-- debit's amount minus these). Like the log it is an audit trail: the rows
-- stay when the account is deleted, and no foreign key makes a debit pay for
-- a check of a lot it has just locked.
CREATE TABLE credit_lot_takes (
    log_id bigint NOT NULL,
    lot_id bigint NOT NULL,
    amount integer NOT NULL CONSTRAINT credit_lot_takes_amount_positive CHECK (amount > 0),
    CONSTRAINT credit_lot_takes_pkey PRIMARY KEY (log_id, lot_id)
);

-- squawk-ignore require-concurrent-index-creation
CREATE INDEX credit_lot_takes_lot_idx ON credit_lot_takes (lot_id);

COMMENT ON TABLE credit_lot_takes IS
    'How much each debit (log_id) took from each tracked lot; a refund gives exactly this back.';
