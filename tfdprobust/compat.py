"""The two supported stacks, and the one place that knows which one is installed.

* **current**: Python 3.12/3.13, TensorFlow >= 2.16 with Keras 2 from the ``tf-keras``
  package (TensorFlow 2.16 made Keras 3 the default ``tf.keras``; our train step, the
  per-layer rules and CleverHans are written against Keras 2, so the package selects
  ``tf-keras`` with ``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads, see
  ``tfdprobust/__init__.py``). tensorflow-privacy does not install there (its newest
  release, 0.9.0, needs Python < 3.12 and TensorFlow 2.15's Keras).
* **reference**: Python 3.11, TensorFlow 2.15 and tensorflow-privacy 0.9.0 (the
  ``tfprivacy`` extra), where ``--dp_path=tf_privacy`` and the cross-checks against
  tensorflow-privacy run.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

from tfdprobust.errors import UsageError

TF_PRIVACY_INSTALL = ("needs tensorflow-privacy, which installs only on the reference stack: Python 3.11 with "
                      "pip install -e \".[tfprivacy]\"")


def has_tf_privacy() -> bool:
    """Whether tensorflow-privacy can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow_privacy") is not None


def reference_stack() -> bool:
    """Python < 3.12: the stack on which tensorflow-privacy must be installed and tested."""
    return sys.version_info < (3, 12)


def require_tf_privacy(what: str = "--dp_path=tf_privacy"):
    """Imports tensorflow-privacy, or raises a one-line :class:`UsageError` naming the extra."""
    if not has_tf_privacy():
        raise UsageError(f"{what} {TF_PRIVACY_INSTALL}")
    import tensorflow_privacy

    return tensorflow_privacy


def stack_name() -> str:
    """``reference`` or ``current``, and the versions that make it."""
    import tensorflow as tf

    import importlib.metadata

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    keras = f"tf-keras {version('tf-keras')}" if os.environ.get("TF_USE_LEGACY_KERAS") == "1" else \
        f"keras {version('keras')}"
    return (f"{'reference' if reference_stack() else 'current'} stack: Python {sys.version.split()[0]}, "
            f"TensorFlow {tf.__version__}, tf.keras = {keras}, NumPy {version('numpy')}, "
            f"dp-accounting {version('dp-accounting')}, tensorflow-privacy {version('tensorflow-privacy')}")


def check_keras() -> None:
    """Refuses Keras 3 as ``tf.keras`` (TensorFlow imported before tfdprobust without
    ``TF_USE_LEGACY_KERAS=1``) with a one-line error instead of failures deep in a step."""
    import tensorflow as tf

    version = getattr(tf.keras, "__version__", "2")
    if version.startswith("3"):
        raise ImportError(f"tfdprobust needs Keras 2 as tf.keras (the tf-keras package), but TensorFlow loaded Keras "
                          f"{version}: import tfdprobust before tensorflow, or set TF_USE_LEGACY_KERAS=1")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Loads ``tensorflow`` with the process's stderr (file descriptor 2) closed to its C++
    start-up chatter: TensorFlow >= 2.16 writes "All log messages before
    absl::InitializeLog() ..." and a CUDA probe line there before its log level applies,
    which would break a CLI's promise of one ``error:`` line on bad input. Python errors
    raised by the import still surface (as exceptions, after stderr is restored)."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class Quiet(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                sys.stderr.flush()
                saved = os.dup(2)
                try:
                    with open(os.devnull, "w") as null:
                        os.dup2(null.fileno(), 2)
                    loader.exec_module(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)

        spec.loader = Quiet()
        return spec


def quiet_tensorflow_import() -> None:
    """For command-line entry points: TensorFlow's start-up lines go nowhere when
    ``TF_CPP_MIN_LOG_LEVEL`` asks for at most warnings (the CLIs set 3)."""
    if "tensorflow" in sys.modules or int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) < 2:
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
