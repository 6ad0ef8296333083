"""Alembic environment for the results store (run programmatically by store.migrate)."""

from alembic import context

from varbench.orchestrator.store import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,  # Optuna keeps its own alembic_version in the same DB
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
