"""Old module paths of the 0.1 layout, kept importable for one release with a deprecation warning.

The commands became packages (``dgml_tf/<command>/``, issue #16): ``dgml_tf.training`` is now
``dgml_tf.train``, ``evaluation`` -> ``evaluate``, ``interpretation`` -> ``explain``,
``exporting`` -> ``export``, ``indexing`` -> ``index``. User code written against the old paths
(``from dgml_tf.training import MetricLearningModel``) keeps working: the old name resolves to
the very same module object under the new name, so classes and registries are not duplicated.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Optional

RENAMED = {
    "dgml_tf.training": "dgml_tf.train",
    "dgml_tf.evaluation": "dgml_tf.evaluate",
    "dgml_tf.interpretation": "dgml_tf.explain",
    "dgml_tf.exporting": "dgml_tf.export",
    "dgml_tf.indexing": "dgml_tf.index",
}


def new_name(fullname: str) -> Optional[str]:
    """The current name of an old module path (``None`` if ``fullname`` was not renamed)."""
    for old, new in RENAMED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _RenamedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path to the module imported under its new name."""

    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        target = new_name(spec.name)
        warnings.warn(f"{spec.name} was renamed {target}; the old path works until the next "
                      "release.", DeprecationWarning, stacklevel=2)
        # The new module itself: importlib keeps its __name__/__spec__ and stores it under the
        # old name in sys.modules too.
        return importlib.import_module(target)

    def exec_module(self, module) -> None:
        """Nothing to run: the module was executed when imported under its new name."""


def install() -> None:
    """Adds the finder once (idempotent)."""
    if not any(isinstance(f, _RenamedModuleFinder) for f in sys.meta_path):
        # First: else the path finder would load an old submodule a second time from the new
        # package's __path__ (two copies of every class).
        sys.meta_path.insert(0, _RenamedModuleFinder())
