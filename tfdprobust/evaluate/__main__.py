"""``python -m tfdprobust.evaluate``: see :mod:`tfdprobust.evaluate.cli`."""

import os
import sys

# Before TensorFlow is imported: hide its CUDA/TensorRT probe messages on CPU machines,
# so that an error is the one line the CLI prints.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import compat  # noqa: E402

compat.quiet_tensorflow_import()  # and TensorFlow >= 2.16's lines printed before that level applies

from tfdprobust.evaluate.cli import main  # noqa: E402

sys.exit(main())
