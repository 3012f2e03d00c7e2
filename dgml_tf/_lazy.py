"""Lazy package exports (PEP 562), shared by every package ``__init__`` that must stay cheap.

``python -m dgml_tf.train`` imports ``dgml_tf/train/__init__.py`` before the command decides
oneDNN, which must happen before Keras (and so TensorFlow) is first imported; ``dgml_tf.flags``
reads ``dgml_tf.models.names`` and ``dgml_tf.losses.registry`` before any command has decided.
So these packages name their exports and import each on first use.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, List, Mapping, Tuple


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose name ``n`` lives in ``exports[n]``.

    Example (in a package ``__init__``)::

        _EXPORTS = {"evaluate_retrieval": "dgml_tf.evaluate.retrieval"}
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
