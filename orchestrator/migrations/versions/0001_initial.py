"""Initial schema: sweeps, cells, trials, frontier points, nightly runs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vb_sweeps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "vb_cells",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("vb_sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("study_name", sa.String(300), nullable=False, unique=True),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("family", sa.String(50), nullable=False),
        sa.Column("target", sa.String(50), nullable=False),
        sa.Column("lipschitz", sa.Float, nullable=False),
        sa.Column("reference", sa.JSON, nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    )
    op.create_table(
        "vb_trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_id", sa.Integer, sa.ForeignKey("vb_cells.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("n_params", sa.BigInteger, nullable=False),
        sa.Column("flops", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("err", sa.Float, nullable=True),
        sa.Column("err_ucb", sa.Float, nullable=True),
        sa.Column("rel_err", sa.Float, nullable=True),
        sa.Column("steps_run", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("cell_id", "number", name="uq_trial_cell_number"),
    )
    op.create_table(
        "vb_frontier",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_id", sa.Integer, sa.ForeignKey("vb_cells.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("eps", sa.Float, nullable=False),
        sa.Column("reached", sa.Boolean, nullable=False),
        sa.Column("n_star", sa.BigInteger, nullable=True),
        sa.Column("trial_number", sa.Integer, nullable=True),
        sa.Column("best_err", sa.Float, nullable=True),
        sa.Column("max_n_tried", sa.BigInteger, nullable=True),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.UniqueConstraint("cell_id", "eps", name="uq_frontier_cell_eps"),
    )
    op.create_table(
        "vb_nightly_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("vb_sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("date", sa.String(10), nullable=False),
        sa.Column("commit", sa.String(40), nullable=False),
        sa.Column("regression", sa.Boolean, nullable=False),
        sa.Column("comparison", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("vb_nightly_runs", "vb_frontier", "vb_trials", "vb_cells", "vb_sweeps"):
        op.drop_table(table)
