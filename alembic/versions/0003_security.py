"""Security: credits_user/credits_admin roles, grants, row level security, self-only debits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from pathlib import Path

from credits_db._migration import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_HERE = Path(__file__).parent


def upgrade() -> None:
    run_sql_file(_HERE / "0003_security.sql")


def downgrade() -> None:
    run_sql_file(_HERE / "0003_security_down.sql")
