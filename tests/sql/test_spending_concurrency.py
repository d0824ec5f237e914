"""Racing calls from many connections: idempotency keys, refunds, and a debit storm on one pool."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import psycopg

from tests.support.databases import Database
from tests.support.helpers import Conn, add_users, balance
from tests.support.spending import add_member, debit, grant, integrity, refund, run_together


def connections(db: Database, count: int) -> list[psycopg.Connection[tuple[Any, ...]]]:
    return [db.connect() for _ in range(count)]


def close_all(conns: list[psycopg.Connection[tuple[Any, ...]]]) -> None:
    for c in conns:
        c.close()


def test_same_key_from_8_connections_debits_once(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    conns = connections(db, 8)
    try:
        results = run_together(8, lambda i: debit(conns[i], user, 100, idempotency_key="race"))
    finally:
        close_all(conns)
    assert all(isinstance(r, dict) for r in results), results
    fresh = [r for r in results if isinstance(r, dict) and not r["replayed"]]
    assert len(fresh) == 1
    assert {r["log_id"] for r in results if isinstance(r, dict)} == {fresh[0]["log_id"]}
    assert balance(conn, user) == (350, 100, 250)
    assert integrity(conn) == []


def test_same_key_pool_debit_from_8_connections_debits_once(db: Database, conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    conns = connections(db, 8)
    try:
        results = run_together(8, lambda i: debit(conns[i], member, 1000, idempotency_key="r"))
    finally:
        close_all(conns)
    assert all(isinstance(r, dict) and r["from_team_pool"] for r in results), results
    assert sum(1 for r in results if isinstance(r, dict) and not r["replayed"]) == 1
    assert balance(conn, admin) == (5000, 1000, 4000)
    assert integrity(conn) == []


def test_same_key_grant_from_8_connections_grants_once(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    conns = connections(db, 8)
    try:
        results = run_together(8, lambda i: grant(conns[i], user, 25, idempotency_key="g"))
    finally:
        close_all(conns)
    assert sum(1 for r in results if isinstance(r, dict) and not r["replayed"]) == 1
    assert all(isinstance(r, dict) for r in results), results
    assert balance(conn, user) == (375, 0, 375)


def test_concurrent_refunds_of_one_debit_refund_once(db: Database, conn: Conn) -> None:
    [user] = add_users(conn, "member")
    log_id = debit(conn, user, 200)["log_id"]
    conns = connections(db, 8)
    try:
        results = run_together(8, lambda i: refund(conns[i], log_id))
    finally:
        close_all(conns)
    assert sum(1 for r in results if isinstance(r, dict)) == 1
    assert all(
        isinstance(r, dict) or (isinstance(r, psycopg.Error) and r.sqlstate == "CR008")
        for r in results
    ), results
    # A refund is a credit: total rises by the refund, used keeps the gross spend.
    assert balance(conn, user) == (550, 200, 350)
    assert integrity(conn) == []


def test_debit_storm_on_one_team_pool(db: Database, conn: Conn) -> None:
    admin, *members = add_users(conn, "team_admin", *["member"] * 4)
    for member in members:
        add_member(conn, admin, member)
    spenders = [admin, *members]
    threads = 32
    conns = connections(db, threads)

    def storm(i: int) -> list[dict[str, Any]]:
        rng = random.Random(i)  # noqa: S311 - reproducible amounts, not secrets
        done: list[dict[str, Any]] = []
        while True:
            user = rng.choice(spenders)
            try:
                done.append(debit(conns[i], user, rng.randint(1, 60)))
            except psycopg.Error as exc:
                if exc.sqlstate != "CR001":
                    raise
                return done

    try:
        results = run_together(threads, storm)
    finally:
        close_all(conns)

    spent: dict[str, int] = defaultdict(int)
    for result in results:
        assert isinstance(result, list), result
        for entry in result:
            assert not entry["replayed"]
            spent[entry["account_user_id"]] += entry["amount"]
    for user in spenders:
        total, used, remaining = balance(conn, user) or (0, 0, 0)
        assert remaining >= 0
        assert used == spent[user]
        assert total == (5000 if user == admin else 350)
    assert sum(spent.values()) > 0
    assert integrity(conn) == []
