"""Pure PyTorch models, targets and metrics for varbench.

Nothing here imports Ray, Optuna, MLflow, SQL or the rest of the project, so
a worker (or a notebook) can use it alone.
"""

from varbench.models.attention import BACKENDS, attention, block_causal_mask
from varbench.models.interp import INTERPOLATIONS, Interpolation, interp_matrix
from varbench.models.schedule import scale_schedule
from varbench.models.targets import TARGETS, Target, make_target
from varbench.models.var import VAR, VARConfig

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
