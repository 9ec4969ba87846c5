"""ceag: prune neural networks without letting the pruning hurt some groups more than others.

Layers, in pipeline order: ``ceag.ops`` (fused kernels behind one API) -> ``ceag.nn``
(masked layers) -> ``ceag.prune`` -> ``ceag.metrics`` -> ``ceag.methods`` (NFT, EL, EL+RB,
CEAG) -> ``ceag.train`` (dense training, GMP, mitigation, checkpoints).
"""

from ceag import (
    _extension,  # noqa: F401  (loads $CEAG_EXTENSION_PATH now; ceag._C on first compiled call)
    methods,
    metrics,
    nn,
    ops,
    prune,
    train,
)

__version__ = "0.1.0"
__all__ = ["metrics", "methods", "nn", "ops", "prune", "train", "__version__"]
