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

import importlib.util
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

    return (f"{'reference' if reference_stack() else 'current'} stack: Python {sys.version.split()[0]}, "
            f"TensorFlow {tf.__version__}, tf.keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else '?'}"
            f", tensorflow-privacy {'yes' if has_tf_privacy() else 'no'}")


def check_keras() -> None:
    """Refuses Keras 3 as ``tf.keras`` (TensorFlow imported before tfdprobust without
    ``TF_USE_LEGACY_KERAS=1``) with a one-line error instead of failures deep in a step."""
    import tensorflow as tf

    version = getattr(tf.keras, "__version__", "2")
    if version.startswith("3"):
        raise ImportError(f"tfdprobust needs Keras 2 as tf.keras (the tf-keras package), but TensorFlow loaded Keras "
                          f"{version}: import tfdprobust before tensorflow, or set TF_USE_LEGACY_KERAS=1")
