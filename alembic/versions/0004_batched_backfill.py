"""Batched backfill: backfill_user_credits_batch() walks users by primary key, O(batch) per call.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0004_batched_backfill.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0004_batched_backfill_down.sql")
