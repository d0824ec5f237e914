"""Spending: team pools, debit/grant/refund with idempotency keys, balance, role-change top-up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0002_spending.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0002_spending_down.sql")
