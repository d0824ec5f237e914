// credits-db from Node.js: the SQL functions are the interface, called with the
// `pg` driver. Keyed debits with a retry that can never spend twice, the team
// pool, and the HTTP mapping of errors that credits-db's Python router uses
// (credits_db/http/errors.py; tests/examples/test_node_example.py checks they agree).
//
// Plain JavaScript (an ES module, JSDoc types): no build step.

import pg from 'pg';

// Each statement is one call of a SQL function, with qualified names and every
// parameter cast to the function's own type (as credits_db/queries.sql does): an
// overload with looser types someone created in public can never take the call.
// pg sends parameterized queries as unnamed statements (never prepared by name),
// so they work through a transaction pooler (PgBouncer, Supabase's port 6543).
const DEBIT = `SELECT public.debit_credits(p_user_id => $1::uuid, p_amount => $2::integer,
  p_source => $3::text, p_description => $4::text, p_idempotency_key => $5::text) AS result`;
const BALANCE = 'SELECT public.get_credit_balance(p_user_id => $1::uuid) AS result';
const ADD_TEAM_MEMBER = `SELECT public.add_team_member(p_team_admin_id => $1::uuid,
  p_team_member_id => $2::uuid)`;

// The SQLSTATEs credits-db raises, and the name of each (the Python exception's).
const NAMED = {
  CR001: 'InsufficientCredits',
  CR002: 'TeamFull',
  CR003: 'NotTeamAdmin',
  CR004: 'AlreadyInTeam',
  CR005: 'UnknownUser',
  CR006: 'InvalidAmount',
  CR007: 'IdempotencyConflict',
  CR008: 'AlreadyRefunded',
  CR009: 'SelfTeamMembership',
  CR010: 'AppendOnlyViolation',
  CR014: 'ReadCommittedRequired', // a role starts renewing at a snapshot level
  '22023': 'InvalidArgument', // invalid_parameter_value
  '22004': 'InvalidArgument', // null_value_not_allowed
  '22P02': 'InvalidArgument', // invalid_text_representation (a malformed uuid)
  '42501': 'PermissionDenied', // insufficient_privilege
  '42883': 'NotInstalled', // undefined_function: the migrations have not run here
  '42P01': 'NotInstalled', // undefined_table
};

// Nothing was written: the whole call may be retried.
const RETRYABLE = [
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available (lock_timeout)
  '57014', // query_canceled (statement_timeout)
];

// The server ended the session; any other SQLSTATE of class 08 counts alike.
const CONNECTION_LOST = [
  '57P01', // admin_shutdown (pg_terminate_backend, a fast shutdown)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '57P04', // database_dropped
  '57P05', // idle_session_timeout
  '25P03', // idle_in_transaction_session_timeout
  '08000', '08003', '08006', '08007', '08P01',
];

/** The HTTP status of every error type, as credits-db's router answers. */
export const HTTP_STATUS = Object.freeze({
  InsufficientCredits: 402,
  TeamFull: 409,
  NotTeamAdmin: 403,
  AlreadyInTeam: 409,
  UnknownUser: 404,
  InvalidAmount: 422,
  IdempotencyConflict: 409,
  AlreadyRefunded: 409,
  SelfTeamMembership: 422,
  AppendOnlyViolation: 500,
  ReadCommittedRequired: 500,
  InvalidArgument: 422,
  PermissionDenied: 403,
  NotInstalled: 500,
  RetryableError: 503,
  ConnectionLost: 503,
  PoolTimeout: 503,
});

/** @type {Readonly<Record<string, string>>} every SQLSTATE translated, and its error type */
export const SQLSTATES = Object.freeze({
  ...NAMED,
  ...Object.fromEntries(RETRYABLE.map((code) => [code, 'RetryableError'])),
  ...Object.fromEntries(CONNECTION_LOST.map((code) => [code, 'ConnectionLost'])),
});

/**
 * SQLSTATE → [HTTP status, error type]: the table credits-db's router applies
 * (besides it: any other class 08 code is ConnectionLost, anything unmapped a 500).
 * @returns {Record<string, [number, string]>}
 */
export function errorTable() {
  return Object.fromEntries(
    Object.entries(SQLSTATES).map(([code, type]) => [code, [HTTP_STATUS[type], type]]),
  );
}

/** A credits-db error: `type` names it, `code` is the SQLSTATE, `status` its HTTP status. */
export class CreditsError extends Error {
  /**
   * @param {string} type one of the keys of HTTP_STATUS
   * @param {string} code the SQLSTATE (08006 for a socket closed without a word)
   * @param {string} message
   * @param {{detail?: string, hint?: string, cause?: unknown, outcomeUnknown?: boolean}} [extra]
   */
  constructor(type, code, message, extra = {}) {
    super(message, { cause: extra.cause });
    this.name = type;
    this.type = type;
    this.code = code;
    this.detail = extra.detail;
    this.hint = extra.hint;
    // For a lost connection: the call may have committed before it broke.
    this.outcomeUnknown = extra.outcomeUnknown ?? false;
  }

  /** @returns {number} the HTTP status the router answers this error with */
  get status() {
    return HTTP_STATUS[this.type] ?? 500;
  }
}

/** A socket-level failure of pg (no SQLSTATE): the connection is gone. */
function isSocketError(/** @type {any} */ err) {
  if (err instanceof pg.DatabaseError || !(err instanceof Error)) return false;
  const code = /** @type {any} */ (err).code;
  return (typeof code === 'string' && /^E[A-Z]+$/.test(code)) // ECONNRESET, EPIPE...
    || /Connection terminated|connection (is )?(closed|lost)/i.test(err.message);
}

/**
 * The CreditsError for a pg error, or `err` itself when credits-db does not map it.
 * @param {unknown} err
 * @returns {unknown}
 */
export function translate(err) {
  if (err instanceof CreditsError) return err;
  if (err instanceof pg.DatabaseError && typeof err.code === 'string') {
    const type = SQLSTATES[err.code] ?? (err.code.startsWith('08') ? 'ConnectionLost' : undefined);
    if (type === undefined) return err;
    if (type === 'ConnectionLost') return connectionLost(err, err.code);
    if (type === 'NotInstalled') {
      return new CreditsError(type, err.code,
        'credits-db is not installed in this database: run credits-db upgrade',
        { detail: err.message, cause: err });
    }
    const message = type === 'RetryableError'
      ? `${err.message} (retryable: this call changed nothing; retry it, with the same idempotency key)`
      : err.message;
    return new CreditsError(type, err.code, message, { detail: err.detail, hint: err.hint, cause: err });
  }
  // pg-pool's connectionTimeoutMillis: nothing was sent.
  if (err instanceof Error && err.message === 'timeout exceeded when trying to connect') {
    return new CreditsError('PoolTimeout', '57P03', 'no database connection available; retry', { cause: err });
  }
  if (isSocketError(err)) return connectionLost(/** @type {Error} */ (err), '08006');
  return err;
}

function connectionLost(/** @type {Error} */ err, /** @type {string} */ code) {
  return new CreditsError('ConnectionLost', code,
    `connection lost (${err.message}); the call may have committed: `
    + 'retry with the same idempotency key to find out',
    { cause: err, outcomeUnknown: true });
}

/**
 * The HTTP response credits-db's router gives for an error: status, headers and
 * the body `{"error": {"code", "type", "message", "detail"?}}`.
 * @param {unknown} err a pg error or a CreditsError
 * @returns {{status: number, headers: Record<string, string>, body: {error: Record<string, string>}}}
 */
export function toHttp(err) {
  const mapped = translate(err);
  if (!(mapped instanceof CreditsError)) {
    return { status: 500, headers: {}, body: { error: { code: 'XX000', type: 'InternalError', message: 'internal error' } } };
  }
  /** @type {Record<string, string>} */
  const error = { code: mapped.code, type: mapped.type, message: mapped.message };
  if (mapped.detail) error.detail = mapped.detail;
  const headers = mapped.status === 503 ? { 'Retry-After': '1' } : {};
  return { status: mapped.status, headers, body: { error } };
}

/**
 * @typedef {object} DebitResult what debit_credits returns (docs/sql-contract.md)
 * @property {number} log_id
 * @property {string} account_user_id the account charged: the team admin's for a pool debit
 * @property {string | null} actor_user_id the member who spent from a pool, else null
 * @property {number} amount
 * @property {number} remaining_credits
 * @property {boolean} from_team_pool
 * @property {boolean} replayed true when the key was used already: nothing was spent now
 */

/**
 * @typedef {object} DebitArgs
 * @property {string} userId the spender
 * @property {number} amount
 * @property {string} [source] default 'usage'
 * @property {string | null} [description]
 * @property {string | null} [idempotencyKey] one per request: a retry sends the same
 */

/** @typedef {{query: (text: string, values?: unknown[]) => Promise<{rows: any[]}>}} Queryable */

/**
 * Spend from the user's own account, else whole from their team admin's pool
 * (`from_team_pool`, `account_user_id` = the admin). Throws a CreditsError.
 * @param {Queryable} db a pg.Pool (autocommit: each call its own transaction) or a pg.Client
 * @param {DebitArgs} args
 * @returns {Promise<DebitResult>}
 */
export async function debit(db, { userId, amount, source = 'usage', description = null, idempotencyKey = null }) {
  return call(db, DEBIT, [userId, amount, source, description, idempotencyKey]);
}

/**
 * The user's own balance, team pool and `spendable` (what one debit would accept now).
 * @param {Queryable} db
 * @param {string} userId
 */
export async function balance(db, userId) {
  return call(db, BALANCE, [userId]);
}

/**
 * Put a member in a team admin's pool (needs credits_admin); a no-op if already there.
 * @param {Queryable} db
 * @param {string} teamAdminId
 * @param {string} memberId
 */
export async function addTeamMember(db, teamAdminId, memberId) {
  await call(db, ADD_TEAM_MEMBER, [teamAdminId, memberId]);
}

async function call(/** @type {Queryable} */ db, /** @type {string} */ text, /** @type {unknown[]} */ values) {
  try {
    const { rows } = await db.query(text, values);
    return rows[0]?.result;
  } catch (err) {
    throw translate(err);
  }
}

/** Wait before the next attempt: 50 ms, 100 ms, 200 ms..., with jitter. */
export function backoff(/** @type {unknown} */ _err, /** @type {number} */ attempt) {
  const ms = 50 * 2 ** (attempt - 1) * (0.5 + Math.random());
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

/**
 * Whether a failed debit may be sent again: a RetryableError or PoolTimeout wrote
 * nothing; after a lost connection only a keyed debit, which the retry replays if
 * the first call committed (`replayed: true`) and runs if it did not.
 * @param {unknown} err
 * @param {string | null | undefined} idempotencyKey
 */
export function mayRetry(err, idempotencyKey) {
  if (!(err instanceof CreditsError)) return false;
  if (err.type === 'RetryableError' || err.type === 'PoolTimeout') return true;
  return err.type === 'ConnectionLost' && idempotencyKey != null;
}

/**
 * debit(), sent again with the same idempotency key after a lost connection, a
 * serialization failure, deadlock or timeout, up to `attempts` times. Pass a
 * pg.Pool: it replaces a broken connection with a new one for the next attempt.
 * @param {pg.Pool} pool
 * @param {DebitArgs} args
 * @param {{attempts?: number, beforeRetry?: (err: CreditsError, attempt: number) => Promise<void>}} [options]
 *   beforeRetry runs before each new attempt (default: backoff)
 * @returns {Promise<DebitResult>}
 */
export async function debitWithRetry(pool, args, { attempts = 5, beforeRetry = backoff } = {}) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await debit(pool, args);
    } catch (err) {
      if (attempt >= attempts || !mayRetry(err, args.idempotencyKey)) throw err;
      await beforeRetry(/** @type {CreditsError} */ (err), attempt);
    }
  }
}
