"""A batch of renew_allowances() walks the period index: (period_ends_at, user_id).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0014_renewal_batches_walk_the_index.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0014_renewal_batches_walk_the_index_down.sql")
