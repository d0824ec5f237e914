"""Shapes of SQL that plan badly at scale, refused in every installed function.

A speed is measured in bench/, never timed here; what a test can hold is the
shape that makes a plan blow up with the data, whatever the size the test has.
"""

from __future__ import annotations

import re

from tests.support.helpers import Conn

NOT_IN_SUBQUERY = re.compile(r"\bNOT\s+IN\s*\(\s*SELECT\b", re.IGNORECASE)


def _function_sources(conn: Conn) -> dict[str, str]:
    return {name: source for name, source in conn.execute(
        "SELECT p.oid::regprocedure::text, p.prosrc FROM pg_proc p"
        " WHERE p.pronamespace IN ('public'::regnamespace, 'credits_internal'::regnamespace)")}


def test_the_shape_check_sees_a_not_in_subquery() -> None:
    assert NOT_IN_SUBQUERY.search("WHERE d.user_id NOT IN (SELECT t.user_id FROM taken t)")
    assert NOT_IN_SUBQUERY.search("where x not in(\n  select 1)")
    assert not NOT_IN_SUBQUERY.search("WHERE v_role_type NOT IN ('text'::regtype)")
    assert not NOT_IN_SUBQUERY.search("WHERE NOT EXISTS (SELECT FROM taken t)")


def test_no_function_filters_by_not_in_a_subquery(conn: Conn) -> None:
    """NOT IN (subquery) is hashed only while the hash fits in work_mem; past that
    PostgreSQL rescans the subquery for each row. expire_credits() and
    renew_allowances() counted skipped accounts so until revision 0015: a call
    over a million due lots ran for more than 40 minutes. NOT EXISTS is an anti-join."""
    sources = _function_sources(conn)
    assert {"expire_credits(timestamp with time zone,integer)",
            "renew_allowances(timestamp with time zone,integer)"} <= set(sources)
    offenders = sorted(name for name, source in sources.items()
                       if NOT_IN_SUBQUERY.search(source))
    assert offenders == []
