"""Converged frontiers: each cell's budget (the recipe), convergence-check trials and
the verdict per frontier point.

Check trials live in their own table so they never count as frontier trials.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("vb_cells", sa.Column("budget", sa.JSON, nullable=True))
    op.create_table(
        "vb_checks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_id", sa.Integer, sa.ForeignKey("vb_cells.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("trial_number", sa.Integer, nullable=False),
        sa.Column("factor", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("err", sa.Float, nullable=True),
        sa.Column("err_ucb", sa.Float, nullable=True),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("cell_id", "kind", "trial_number", "factor", name="uq_check"),
    )
    op.create_table(
        "vb_verdicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_id", sa.Integer, sa.ForeignKey("vb_cells.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("eps", sa.Float, nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("trial_number", sa.Integer, nullable=True),
        sa.Column("n_star", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.UniqueConstraint("cell_id", "eps", name="uq_verdict_cell_eps"),
    )


def downgrade() -> None:
    op.drop_table("vb_verdicts")
    op.drop_table("vb_checks")
    with op.batch_alter_table("vb_cells") as batch:
        batch.drop_column("budget")
