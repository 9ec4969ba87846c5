"""The application on top of the library: experiments over a grid of methods, sparsities
and seeds (``experiment``), the ``ceag`` command line (``cli``), plots, the bundled and your
own data sets (``data``) and the fairness audit (``audit``).

Installed with the ``app`` extra (``pip install ceag[app]``: pandas, matplotlib, tqdm,
scikit-learn, pyarrow); the core (``ceag.ops``, ``ceag.nn``, ``ceag.prune``,
``ceag.metrics``, ``ceag.methods``, ``ceag.train``) needs torch and cooper only.
"""

import importlib.util

_MISSING = [name for name in ("pandas", "matplotlib", "tqdm", "sklearn") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"ceag.app (the ceag command, experiments, plots, data sets) needs {', '.join(_MISSING)}: "
        "install the app extra, `pip install ceag[app]`; the core library (ceag.ops, ceag.methods, "
        "ceag.train, ...) works without them"
    )
