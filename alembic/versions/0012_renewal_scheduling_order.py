"""Openers lock the role rows they read; a role starts renewing at READ COMMITTED only.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0012_renewal_scheduling_order.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0012_renewal_scheduling_order_down.sql")
