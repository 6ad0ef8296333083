"""Pure PyTorch models, targets and metrics for varbench.

Nothing here imports Ray, Optuna, MLflow, SQL or the rest of the project, so
a worker (or a notebook) can use it alone.
"""

from models.attention import BACKENDS, attention, block_causal_mask
from models.interp import INTERPOLATIONS, Interpolation, interp_matrix
from models.schedule import scale_schedule
from models.targets import TARGETS, Target, make_target
from models.var import VAR, VARConfig

__all__ = [
    "BACKENDS",
    "INTERPOLATIONS",
    "TARGETS",
    "VAR",
    "Interpolation",
    "Target",
    "VARConfig",
    "attention",
    "block_causal_mask",
    "interp_matrix",
    "make_target",
    "scale_schedule",
]
