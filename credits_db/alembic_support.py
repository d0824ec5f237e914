"""Keep a host application's Alembic autogenerate away from credits-db's objects.

credits-db installs its tables next to the host's in schema ``public``; the
host's ``alembic revision --autogenerate`` sees them in the database, finds them
in none of the host's models, and proposes dropping them. Pass the two filters
to ``context.configure`` in the host's ``env.py``::

    from credits_db.alembic_support import include_name, include_object

    context.configure(connection=connection, target_metadata=target_metadata,
                      include_name=include_name, include_object=include_object)

They hide every table and view credits-db creates (:data:`OWNED_TABLES`,
:data:`OWNED_VIEWS`, :data:`FORMER_TABLES`), its version table, and everything in its
own schema :data:`INTERNAL_SCHEMA` (with ``include_schemas=True``). They never hide
``users``: that table is the host's, whoever created it, and credits-db only
adds triggers to it, which autogenerate does not compare. See docs/install.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.schema import SchemaItem

from credits_db.migrate import VERSION_TABLE

INTERNAL_SCHEMA = "credits_internal"
"""credits-db's own schema: nothing in it ever belongs to the host."""

OWNED_TABLES: frozenset[str] = frozenset({
    "role_credits",
    "user_credits",
    "credit_usage_log",
    "team_credit_sharing",
    "credit_idempotency_keys",
    "credit_allocation_failures",
    "credit_lots",
    "credit_lot_takes",
    VERSION_TABLE,
})
"""Every table credits-db creates in ``public`` at head (its version table included).

tests/migrations/test_alembic_support.py checks this against the catalog after
``upgrade head``: a revision that adds a table fails that test until it is listed."""

OWNED_VIEWS: frozenset[str] = frozenset({"credits_backfill_candidates"})
"""Every view credits-db creates in ``public`` (checked like :data:`OWNED_TABLES`)."""

FORMER_TABLES: frozenset[str] = frozenset({"credits_db_install"})
"""Tables of ours that earlier revisions kept in ``public`` (0008 moved the install record
to ``credits_internal.install_record``): hidden too, for a host whose database is not
upgraded yet when it runs autogenerate with this package."""

_OWNED_RELATIONS = OWNED_TABLES | OWNED_VIEWS | FORMER_TABLES


def owns(name: str, schema: str | None = None) -> bool:
    """True for a table or view credits-db created (``schema`` None is the default schema)."""
    if schema == INTERNAL_SCHEMA:
        return True
    return schema in (None, "public") and name in _OWNED_RELATIONS


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook: skip credits-db's schema and relations when reflecting.

    Anything else (the host's tables, columns, indexes) is included.
    """
    if type_ == "schema":
        return name != INTERNAL_SCHEMA
    if type_ == "table" and name is not None:
        return not owns(name, parent_names.get("schema_name"))
    return True


def include_object(object_: SchemaItem, name: str | None, type_: str, reflected: bool,
                   compare_to: SchemaItem | None) -> bool:
    """Alembic's ``include_object`` hook: skip credits-db's tables and anything on them.

    The second line of defence behind :func:`include_name`, for hosts that call
    ``compare_metadata`` themselves or reflect without it: a table is matched by
    name and schema, an index, constraint or column by the table it belongs to.
    """
    table = object_ if type_ == "table" else getattr(object_, "table", None)
    table_name = getattr(table, "name", None)
    if not isinstance(table_name, str):
        return True
    return not owns(table_name, getattr(table, "schema", None))
