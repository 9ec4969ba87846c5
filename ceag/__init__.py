"""ceag: prune neural networks without letting the pruning hurt some groups more than others.

Layers, in pipeline order: ``ceag.ops`` (fused kernels behind one API) -> ``ceag.nn``
(masked layers) -> pruning, metrics, methods, training (later issues).
"""

from ceag import _extension  # noqa: F401  (registers torch.ops.ceag before anything uses it)
from ceag import nn, ops

__version__ = "0.1.0"
__all__ = ["nn", "ops", "__version__"]
