"""Repository tools for credits-db's maintainers (not shipped in the wheel).

``python -m scripts.new_revision`` writes a new Alembic revision from ``sql/``;
see docs/migrations.md.
"""
