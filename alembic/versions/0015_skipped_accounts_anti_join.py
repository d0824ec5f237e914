"""The skipped accounts of expire_credits() and renew_allowances() counted by an anti-join.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0015_skipped_accounts_anti_join.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0015_skipped_accounts_anti_join_down.sql")
