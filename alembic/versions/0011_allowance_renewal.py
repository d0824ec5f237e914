"""Allowances renew by role: renewal_interval, rollover_cap, renew_allowances().

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0011_allowance_renewal.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0011_allowance_renewal_down.sql")
