"""Alembic environment of the registry. inspectd runs migrations itself (inspectd.registry.db): it passes the
connection, inside its own transaction and lock, in `config.attributes["connection"]`.

To write a new migration against a scratch database (developers only):

    python -c "from inspectd.registry.db import alembic_config; from alembic import command; \
        command.revision(alembic_config('sqlite:///scratch.db'), 'what changes', autogenerate=True)"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from inspectd.registry.tables import metadata

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:  # a developer's `alembic` run against the URL in the config (see the docstring)
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
