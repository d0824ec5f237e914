"""Renewal in one statement after the locks, its period inlined, custom plans.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0013_renewal_in_one_statement.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0013_renewal_in_one_statement_down.sql")
