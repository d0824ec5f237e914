"""Failed signup allocations are recorded.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0009_allocation_failures.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0009_allocation_failures_down.sql")
