"""Debit: the keyed path and the team pool path each in one statement.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0005_debit_one_statement_per_path.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0005_debit_one_statement_per_path_down.sql")
