"""The catalog fingerprint every migration test compares (a support module: no tests here).

One fingerprint of what credits-db puts in a database, read from the system
catalogs of schemas ``public`` and ``credits_internal``: two databases with
equal fingerprints have the same schema, code, privileges and comments, so a
downgrade that leaves its predecessor's fingerprint restored it exactly. Rows
are ``(kind, object, detail)``, sorted. Data is not part of it (sequence
values neither); Alembic's own table ``credits_db_version`` is left out.

ACLs are read with ``acldefault`` standing in for a NULL ACL (a NULL ACL means
the default, so an ACL written back to the default is the same privileges).
Column order is left out: a column added by ``ALTER TABLE`` in a revision sits
last, where ``sql/`` declares it in its ``CREATE TABLE``.
"""

from __future__ import annotations

import difflib
import re

import psycopg

from tests.support.helpers import Conn

Row = tuple[str, str, str]

# Every detail is text; concat_ws skips NULLs, so an absent property is absent.
_FINGERPRINT = """
WITH ns AS (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_catalog.pg_namespace n
    WHERE n.nspname IN ('public', 'credits_internal')
), rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relowner, c.relacl, c.reloptions,
           c.relrowsecurity, c.relforcerowsecurity
    FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relname <> 'credits_db_version' AND c.relkind NOT IN ('i', 'I', 't')
)
SELECT 'schema', ns.nspname,
       concat_ws(' | ', 'owner ' || pg_catalog.pg_get_userbyid(ns.nspowner),
                 'acl ' || pg_catalog.array_to_string(
                     coalesce(ns.nspacl, pg_catalog.acldefault('n', ns.nspowner)), ','),
                 'comment ' || pg_catalog.obj_description(ns.oid, 'pg_namespace'))
FROM ns
UNION ALL
SELECT 'relation', r.oid::regclass::text,
       concat_ws(' | ', 'kind ' || r.relkind::text, 'persistence ' || r.relpersistence::text,
                 'owner ' || pg_catalog.pg_get_userbyid(r.relowner),
                 'options ' || pg_catalog.array_to_string(r.reloptions, ','))
FROM rel r
UNION ALL
SELECT 'acl', r.oid::regclass::text,
       pg_catalog.array_to_string(coalesce(r.relacl, pg_catalog.acldefault(
           CASE r.relkind WHEN 'S' THEN 's'::"char" ELSE 'r'::"char" END, r.relowner)), ',')
FROM rel r WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
UNION ALL
SELECT 'row security', r.oid::regclass::text,
       concat_ws(' ', 'enabled ' || r.relrowsecurity::text, 'forced ' || r.relforcerowsecurity::text)
FROM rel r WHERE r.relkind IN ('r', 'p')
UNION ALL
SELECT 'column', a.attrelid::regclass::text || '.' || a.attname,
       concat_ws(' | ', pg_catalog.format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attnotnull THEN 'not null' END,
                 'default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                 CASE WHEN a.attgenerated <> '' THEN 'generated ' || a.attgenerated::text END,
                 CASE WHEN a.attidentity <> '' THEN 'identity ' || a.attidentity::text END,
                 CASE WHEN a.attcollation NOT IN (0, t.typcollation)
                      THEN 'collate ' || a.attcollation::regcollation::text END,
                 'acl ' || pg_catalog.array_to_string(a.attacl, ','))
FROM pg_catalog.pg_attribute a
JOIN rel r ON r.oid = a.attrelid AND r.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', coalesce(co.conrelid::regclass::text, '-') || '.' || co.conname,
       concat_ws(' | ', pg_catalog.pg_get_constraintdef(co.oid),
                 CASE WHEN co.contypid <> 0 THEN 'domain ' || co.contypid::regtype::text END)
FROM pg_catalog.pg_constraint co JOIN ns ON ns.oid = co.connamespace
WHERE co.conrelid = 0 OR co.conrelid IN (SELECT oid FROM rel)
UNION ALL
SELECT 'index', i.indexrelid::regclass::text, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i WHERE i.indrelid IN (SELECT oid FROM rel)
UNION ALL
SELECT 'trigger', tg.tgrelid::regclass::text || '.' || tg.tgname,
       concat_ws(' | ', pg_catalog.pg_get_triggerdef(tg.oid), 'enabled ' || tg.tgenabled::text)
FROM pg_catalog.pg_trigger tg WHERE NOT tg.tgisinternal
UNION ALL
SELECT 'event trigger', e.evtname,
       concat_ws(' | ', e.evtevent, e.evtfoid::regproc::text, 'enabled ' || e.evtenabled::text,
                 pg_catalog.array_to_string(e.evttags, ','))
FROM pg_catalog.pg_event_trigger e
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       concat_ws(' | ',
                 CASE WHEN p.prokind = 'a' THEN 'aggregate'
                      ELSE pg_catalog.pg_get_functiondef(p.oid) END,
                 'owner ' || pg_catalog.pg_get_userbyid(p.proowner),
                 'acl ' || pg_catalog.array_to_string(
                     coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner)), ','),
                 'comment ' || pg_catalog.obj_description(p.oid, 'pg_proc'))
FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
UNION ALL
SELECT 'type', t.oid::regtype::text,
       concat_ws(' | ', 'kind ' || t.typtype::text,
                 'base ' || CASE WHEN t.typtype = 'd'
                                 THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END,
                 CASE WHEN t.typnotnull THEN 'not null' END,
                 'default ' || t.typdefault,
                 'labels ' || (SELECT pg_catalog.string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                               FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid),
                 'owner ' || pg_catalog.pg_get_userbyid(t.typowner))
FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE t.typtype IN ('c', 'd', 'e', 'r', 'm')
  AND (t.typrelid = 0 OR t.typrelid IN (SELECT oid FROM rel WHERE relkind = 'c'))
UNION ALL
SELECT 'view', r.oid::regclass::text, pg_catalog.pg_get_viewdef(r.oid)
FROM rel r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'sequence', s.seqrelid::regclass::text,
       concat_ws(' | ', pg_catalog.format_type(s.seqtypid, NULL), 'start ' || s.seqstart,
                 'increment ' || s.seqincrement, 'min ' || s.seqmin, 'max ' || s.seqmax,
                 'cache ' || s.seqcache, CASE WHEN s.seqcycle THEN 'cycle' END,
                 (SELECT pg_catalog.string_agg(
                             CASE dep.deptype WHEN 'i' THEN 'identity of ' ELSE 'owned by ' END
                             || dep.refobjid::regclass::text || '.' || att.attname, ', ')
                  FROM pg_catalog.pg_depend dep
                  JOIN pg_catalog.pg_attribute att
                    ON att.attrelid = dep.refobjid AND att.attnum = dep.refobjsubid
                  WHERE dep.classid = 'pg_catalog.pg_class'::regclass AND dep.objid = s.seqrelid
                    AND dep.refclassid = 'pg_catalog.pg_class'::regclass
                    AND dep.deptype IN ('a', 'i')))
FROM pg_catalog.pg_sequence s JOIN rel r ON r.oid = s.seqrelid
UNION ALL
SELECT 'policy', pol.polrelid::regclass::text || '.' || pol.polname,
       concat_ws(' | ', pol.polcmd::text, pol.polpermissive, pol.polroles::regrole[]::text,
                 pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
                 pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid))
FROM pg_catalog.pg_policy pol
UNION ALL
SELECT 'default acl', concat_ws(' ', pg_catalog.pg_get_userbyid(da.defaclrole),
                                da.defaclnamespace::regnamespace::text, da.defaclobjtype::text),
       pg_catalog.array_to_string(da.defaclacl, ',')
FROM pg_catalog.pg_default_acl da
UNION ALL
SELECT 'comment', o.type || ' ' || o.identity, d.description
FROM pg_catalog.pg_description d,
     LATERAL pg_catalog.pg_identify_object(d.classoid, d.objoid, d.objsubid) o
WHERE d.objoid >= 16384
  AND d.classoid NOT IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_namespace'::regclass)
  AND o.schema IN ('public', 'credits_internal')
  AND o.identity NOT LIKE 'public.credits_db_version%'
ORDER BY 1, 2, 3
"""


def fingerprint(conn: Conn) -> list[Row]:
    """The catalog fingerprint of the database ``conn`` is connected to."""
    rows = conn.execute(_FINGERPRINT).fetchall()
    return [(str(kind), str(name), str(detail)) for kind, name, detail in rows]


def fingerprint_at(url: str) -> list[Row]:
    """The catalog fingerprint of the database at ``url`` (its own short connection)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return fingerprint(conn)


def difference(expected: list[Row], actual: list[Row]) -> str:
    """What differs, for an assertion message: ``-`` expected, ``+`` actual; an object on
    both sides with another detail as a diff of that detail."""
    before, after = _by_object(expected), _by_object(actual)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, []), after.get(key, [])
        if old == new:
            continue
        lines.append(f"{key[0]} {key[1]}:")
        if len(old) == len(new) == 1:
            diff = difflib.unified_diff(old[0].splitlines(), new[0].splitlines(), lineterm="", n=1)
            lines += [f"    {line}" for line in list(diff)[2:]]
        else:
            lines += [f"  - {detail}" for detail in old] + [f"  + {detail}" for detail in new]
    return "\n".join(lines) or "(the same rows)"


def _by_object(rows: list[Row]) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for kind, name, detail in rows:
        grouped.setdefault((kind, name), []).append(detail)
    return grouped


def by_kind(rows: list[Row], kind: str) -> list[Row]:
    """The rows of one kind (``function``, ``acl``, ...)."""
    return [row for row in rows if row[0] == kind]


# 0003_security_down.sql keeps, on purpose, the USAGE on schema public that 0003
# granted directly to a NOINHERIT authenticated or service_role (PostgreSQL 15,
# where Supabase's roles exist): "Supabase grants it to them itself". On a
# server whose Supabase roles are stand-ins (the test server), that is the one
# difference a downgrade to 0002 leaves; comparisons across 0003 drop it.
_KEPT_SCHEMA_USAGE = re.compile(r",(?:authenticated|service_role)=U/[^,| ]+")


def without_kept_schema_usage(rows: list[Row]) -> list[Row]:
    """The rows, schema public's ACL without the API roles' USAGE that 0003's downgrade keeps."""
    return [
        (kind, name, _KEPT_SCHEMA_USAGE.sub("", detail))
        if (kind, name) == ("schema", "public") else (kind, name, detail)
        for kind, name, detail in rows
    ]
