"""Core: users check, role_credits, user_credits, credit_usage_log, signup trigger, backfill.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from pathlib import Path

from credits_db._migration import log_users_waiting_for_backfill, run_sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0001_core.sql")
    log_users_waiting_for_backfill()


def downgrade() -> None:
    run_sql_file(_HERE / "0001_core_down.sql")
