"""Fine-tuning methods for sparse models (being split into one module per concern)."""

from ceag.methods.constrained import *  # noqa: F401,F403
from ceag.methods.constrained import DUAL_OPTIMIZERS, MULTIPLIER_SCALES, PI, PRIMALS  # noqa: F401
from ceag.methods.constrained import __all__  # noqa: F401
