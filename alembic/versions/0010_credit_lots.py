"""Credits are lots: expiry, priority, spending order, expire_credits().

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0010_credit_lots.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0010_credit_lots_down.sql")
