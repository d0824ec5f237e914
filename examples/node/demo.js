// The credits-db Node example, against a database where credits-db is installed:
//
//   npm ci && node demo.js postgresql://user@host/db
//   node demo.js --pause postgresql://user@host/db   (wait for Enter before the keyed
//                                                     debit and before each retry)
//
// It creates a team admin and a member (the login needs credits_admin, or to own the
// schema), then: a keyed debit (retried after a lost connection or a retryable
// error), its replay, a team pool debit, the member's balance, and two errors
// as the HTTP API would answer them. One JSON object a line, `step` first.

import { randomUUID } from 'node:crypto';
import readline from 'node:readline';
import pg from 'pg';
import { addTeamMember, backoff, balance, debit, debitWithRetry, toHttp } from './credits.js';

const APPLICATION_NAME = 'credits-db-node-demo';

/** Print one step as a JSON line. */
function show(/** @type {string} */ step, /** @type {object} */ fields = {}) {
  console.log(JSON.stringify({ step, ...fields }));
}

/** With --pause, wait for one line on stdin (the test, or you, says go). */
function pauser(/** @type {boolean} */ enabled) {
  if (!enabled) return { wait: async () => {}, close: () => {} };
  const input = readline.createInterface({ input: process.stdin });
  const lines = input[Symbol.asyncIterator]();
  return {
    wait: async (/** @type {string} */ before) => {
      show('paused', { before });
      await lines.next();
    },
    close: () => input.close(),
  };
}

/** A team admin and a member of their pool, new users with a unique email. */
async function createTeam(/** @type {pg.Pool} */ pool, /** @type {string} */ tag) {
  const { rows } = await pool.query(
    "INSERT INTO users (email, role) VALUES ($1, 'team_admin'), ($2, 'member') RETURNING id, role",
    [`ana-${tag}@example.com`, `ben-${tag}@example.com`],
  );
  const teamAdmin = rows.find((r) => r.role === 'team_admin').id;
  const member = rows.find((r) => r.role === 'member').id;
  await addTeamMember(pool, teamAdmin, member);
  return { teamAdmin, member };
}

async function main(/** @type {string} */ url, /** @type {ReturnType<typeof pauser>} */ pause) {
  const pool = new pg.Pool({ connectionString: url, application_name: APPLICATION_NAME, max: 2 });
  // An idle connection that breaks is dropped by the pool (a new one opens when
  // needed); without a listener Node would exit on the 'error' event.
  pool.on('error', () => {});
  try {
    const tag = randomUUID().slice(0, 8);
    const { teamAdmin, member } = await createTeam(pool, tag);
    show('users', { teamAdmin, member });

    // The key is made once per request, before the first attempt: every retry sends it.
    const request = { userId: member, amount: 100, source: 'search', idempotencyKey: `demo-${tag}-1` };
    const beforeRetry = async (/** @type {any} */ err, /** @type {number} */ attempt) => {
      show('retry', { attempt, type: err.type, code: err.code, message: err.message });
      await (pause.enabled ? pause.wait('retry') : backoff(err, attempt));
    };
    await pause.wait('debit');
    const result = await debitWithRetry(pool, request, { beforeRetry });
    show('debit', { idempotencyKey: request.idempotencyKey, result });
    show('replay', { result: await debitWithRetry(pool, request) });

    // 1000 is more than the member's own 250 left: the admin's pool pays it whole.
    const fromPool = await debitWithRetry(pool, { ...request, amount: 1000, idempotencyKey: `demo-${tag}-2` });
    show('pool_debit', { result: fromPool });
    show('balance', { result: await balance(pool, member) });

    for (const [what, change] of /** @type {const} */ ([
      ['insufficient', { amount: 1_000_000, idempotencyKey: null }],
      ['key_reused', { amount: 5 }], // the first request's key, another amount
    ])) {
      try {
        await debit(pool, { ...request, ...change });
        show('unexpected_success', { what });
      } catch (err) {
        show('error', { what, http: toHttp(err) });
      }
    }
    show('done');
  } finally {
    await pool.end();
  }
}

const argv = process.argv.slice(2);
const url = argv.find((a) => !a.startsWith('--')) ?? process.env.DATABASE_URL;
if (!url) {
  console.error('usage: node demo.js [--pause] postgresql://user@host/db');
  process.exit(2);
}
const pause = { enabled: argv.includes('--pause'), ...pauser(argv.includes('--pause')) };
try {
  await main(url, pause);
} catch (err) {
  show('failed', { http: toHttp(err), message: String(err) });
  process.exitCode = 1;
} finally {
  pause.close();
}
