"""One naming scheme: what is not the interface moves into credits_internal.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0008_internal_names.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0008_internal_names_down.sql")
