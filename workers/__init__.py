"""Data plane: run trials from plain configs and return plain results.

Workers hold no connections and write nothing: the driver owns every write.
"""

from varbench.workers.config import TrialConfig, TrialResult
from varbench.workers.trial import run_trial

__all__ = ["TrialConfig", "TrialResult", "run_trial"]
