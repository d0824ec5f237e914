"""Debit: fewer PL/pgSQL conditions on the keyed and pool paths.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0006_debit_fewer_conditions.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0006_debit_fewer_conditions_down.sql")
