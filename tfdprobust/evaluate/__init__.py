"""Robustness evaluation of saved models: attacks, sweeps, geometry, corruptions, reports.

The flow, one module each: :mod:`.config` (what to run) -> :mod:`.models` and
:mod:`.data` (load and check) -> :mod:`.sections` (each section; the robust accuracy
is :func:`tfdprobust.ensemble.robust_accuracy`) -> :mod:`.report` (files) ->
:mod:`.run` (:func:`evaluate_models`, the whole thing); :mod:`.cli` is the thin main.

Command line (a thin wrapper over :func:`evaluate_models`)::

    python -m tfdprobust.evaluate --model saved_models/dp --model saved_models/sgd \\
        --data_dir ../shared/data --out reports/dp_vs_sgd   # or just --model M

Any SavedModel directory (serving signature: images in [0, 1] -> logits) or Keras
model (.keras, .h5, Keras SavedModel) works. A ``metadata.json`` beside the model
(written by the training export) is shown in the report.

What one report holds, per model (sections can be chosen with ``--sections``):

* ``sweeps``: accuracy vs eps for each sweep attack (seeds/004 Fig. 2, seeds/001 Table 1);
* ``ensemble``: robust accuracy under the ``standard`` (or ``quick``) attack ensemble at
  every eps of both grids, with the accuracy after each attack and a 95% CI;
* ``iterations``: PGD iterations needed to fool each example (seeds/004 Fig. 4);
* ``geometry``: DeepFool distances (linearized, eq. 4 of seeds/004; and iterative);
* ``curvature``: top-k input-Hessian eigenvalues by Lanczos (seeds/004 Fig. 5c);
* ``corruptions``: MNIST-C style accuracy per corruption and the mean;
* gradient-masking sanity checks (always; see :mod:`tfdprobust.sanity`).

Outputs in ``--out``: ``results.json`` (every number), ``results.csv`` (long format),
``report.md`` (side-by-side table and the sanity checks), PNG plots. The folder is
written under a temporary name and renamed at the end, so it is never half-written.

Example:
    >>> from tfdprobust import evaluate
    >>> cfg = evaluate.SuiteConfig(num_examples=200, sections=("sweeps",))
    >>> results = evaluate.evaluate_models(["m.keras"], "../shared/data", "reports/x", cfg)  # doctest: +SKIP
"""

from tfdprobust.evaluate.cli import config_from_flags, main  # noqa: F401
from tfdprobust.evaluate.config import DATASETS, INPUT_RANGES, QUICK, SECTIONS, SuiteConfig  # noqa: F401
from tfdprobust.evaluate.data import load_eval_data, load_test_split  # noqa: F401
from tfdprobust.evaluate.models import (  # noqa: F401
    LoadedModel, check_input_range, check_model_on_data, load_model, read_metadata)
from tfdprobust.evaluate.report import check_out_dir, make_plots, markdown_report, write_outputs  # noqa: F401
from tfdprobust.evaluate.run import evaluate_models  # noqa: F401
from tfdprobust.evaluate.sections import evaluate_model, run_ensemble, run_sweeps  # noqa: F401
