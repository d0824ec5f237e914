"""The ledger cannot be fooled: pinned names, entitlement, caller-scoped keys, account lives.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from pathlib import Path

from credits_db._migration import run_sql_file, warn_if_public_schema_is_writable

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0007_ledger_cannot_be_fooled.sql")
    warn_if_public_schema_is_writable()


def downgrade() -> None:
    run_sql_file(_HERE / "0007_ledger_cannot_be_fooled_down.sql")
