"""Team pools: add_team_member / remove_team_member, every rule and error, the cap under concurrency."""

from __future__ import annotations

import uuid

import psycopg

from tests.support.databases import Database
from tests.support.helpers import Conn, add_users
from tests.support.spending import (
    add_member,
    fails_cleanly,
    integrity,
    remove_member,
    run_together,
)


def members_of(conn: Conn, admin: str) -> list[str]:
    rows = conn.execute(
        "SELECT team_member_id::text FROM team_credit_sharing WHERE team_admin_id = %s"
        " ORDER BY team_member_id",
        (admin,),
    ).fetchall()
    return [row[0] for row in rows]


def test_add_and_remove_member(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    assert members_of(conn, admin) == [member]
    assert remove_member(conn, admin, member) is True
    assert members_of(conn, admin) == []
    assert remove_member(conn, admin, member) is False


def test_adding_the_same_pair_again_is_a_no_op(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    before = conn.execute("SELECT * FROM team_credit_sharing").fetchall()
    add_member(conn, admin, member)
    assert conn.execute("SELECT * FROM team_credit_sharing").fetchall() == before


def test_team_full_is_cr002(conn: Conn) -> None:
    admin, *members = add_users(conn, "team_admin", *["member"] * 5)
    for member in members[:4]:
        add_member(conn, admin, member)
    fails_cleanly(conn, "CR002", "SELECT add_team_member(%s, %s)", (admin, members[4]))
    # Re-adding an existing member of a full team is still a no-op, not CR002.
    add_member(conn, admin, members[0])


def test_role_without_team_is_cr003(conn: Conn) -> None:
    for role in ("member", "admin", "super_admin", None, "unknown-role"):
        admin, member = add_users(conn, role, "member")
        fails_cleanly(conn, "CR003", "SELECT add_team_member(%s, %s)", (admin, member))


def test_member_of_another_team_is_cr004(conn: Conn) -> None:
    first, second, member = add_users(conn, "team_admin", "team_admin", "member")
    add_member(conn, first, member)
    error = fails_cleanly(conn, "CR004", "SELECT add_team_member(%s, %s)", (second, member))
    assert first in (error.diag.message_detail or "")


def test_unknown_or_null_user_is_cr005(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    nobody = str(uuid.uuid4())
    for pair in [(nobody, member), (admin, nobody), (None, member), (admin, None)]:
        fails_cleanly(conn, "CR005", "SELECT add_team_member(%s, %s)", pair)
    fails_cleanly(conn, "CR005", "SELECT remove_team_member(%s, %s)", (None, member))
    assert remove_member(conn, nobody, member) is False


def test_self_membership_is_cr009(conn: Conn) -> None:
    [admin] = add_users(conn, "team_admin")
    fails_cleanly(conn, "CR009", "SELECT add_team_member(%s, %s)", (admin, admin))


def test_check_order(conn: Conn) -> None:
    # Documented order: NULL -> CR005, self -> CR009, admin exists, member exists,
    # role allows a team -> CR003, current pool -> CR004, room -> CR002.
    plain, member, other_admin = add_users(conn, "member", "member", "team_admin")
    add_member(conn, other_admin, member)
    fails_cleanly(conn, "CR009", "SELECT add_team_member(%s, %s)", (plain, plain))
    fails_cleanly(conn, "CR005", "SELECT add_team_member(%s, %s)", (plain, str(uuid.uuid4())))
    fails_cleanly(conn, "CR003", "SELECT add_team_member(%s, %s)", (plain, member))


def test_deleting_a_user_ends_the_membership(conn: Conn) -> None:
    admin, member = add_users(conn, "team_admin", "member")
    add_member(conn, admin, member)
    conn.execute("DELETE FROM users WHERE id = %s", (member,))
    assert members_of(conn, admin) == []
    assert integrity(conn) == []


def test_table_constraints_are_named(conn: Conn) -> None:
    names = {
        row[0]
        for row in conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'team_credit_sharing'::regclass"
        )
    }
    assert {"team_credit_sharing_member_unique", "team_credit_sharing_not_self"} <= names
    [admin] = add_users(conn, "team_admin")
    error = fails_cleanly(
        conn, "23514",
        "INSERT INTO team_credit_sharing (team_admin_id, team_member_id, seat) VALUES (%s, %s, 1)",
        (admin, admin),
    )
    assert error.diag.constraint_name == "team_credit_sharing_not_self"


def test_concurrent_adds_respect_the_cap(db: Database, conn: Conn) -> None:
    admin, *members = add_users(conn, "team_admin", *["member"] * 8)
    connections = [db.connect() for _ in members]
    try:
        results = run_together(
            8, lambda i: add_member(connections[i], admin, members[i])
        )
    finally:
        for connection in connections:
            connection.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 4
    assert all(isinstance(f, psycopg.Error) and f.sqlstate == "CR002" for f in failures), failures
    assert len(members_of(conn, admin)) == 4
    assert integrity(conn) == []


def test_concurrent_adds_of_one_member_to_two_teams(db: Database, conn: Conn) -> None:
    first, second, member = add_users(conn, "team_admin", "team_admin", "member")
    admins = [first, second] * 4
    connections = [db.connect() for _ in admins]
    try:
        results = run_together(8, lambda i: add_member(connections[i], admins[i], member))
    finally:
        for connection in connections:
            connection.close()
    [(owner,)] = conn.execute(
        "SELECT team_admin_id::text FROM team_credit_sharing WHERE team_member_id = %s",
        (member,),
    ).fetchall()
    for admin, result in zip(admins, results, strict=True):
        if admin == owner:
            assert result is None  # joined, or a no-op re-add of the same pair
        else:
            assert isinstance(result, psycopg.Error) and result.sqlstate == "CR004", result
