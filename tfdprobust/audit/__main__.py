"""Membership-inference privacy audit of exported models.

    python -m tfdprobust.audit --model saved_models/nodp --name non-dp \\
        --model saved_models/dp --name dp --out reports/audit

Prints AUC, attacker advantage, TPR at 1% FPR and the lower bound on epsilon that each
attack implies, and writes audit.json, roc.png and report.md to --out. Exit status: 0,
1 if an implied epsilon exceeds a model's claimed epsilon, 2 on bad input (nothing
written). The work is :func:`tfdprobust.audit.run_audit`; this file only reads flags.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-probe noise on CPU machines

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_multi_string("model", [], "Export folder (saved_models/<run>) or SavedModel/.keras file; repeat to "
                          "compare models side by side.")
flags.DEFINE_multi_string("name", [], "Display name per --model (default: folder name).")
flags.DEFINE_string("out", None, "Report folder (new, empty, or an earlier audit's output).")
flags.DEFINE_string("data_dir", None, "Override the recorded data folder (raw IDX/npz files); required for models "
                    "without a recorded data_config.")
flags.DEFINE_string("dataset", None, "Override the recorded dataset (mnist, fashion_mnist, kmnist, cifar10).")
flags.DEFINE_float("delta", None, "Delta of the implied epsilon (default: the model's delta, else 1e-5).")
flags.DEFINE_float("alpha", 0.05, "A model's bounds hold jointly with probability >= 1 - alpha.")
flags.DEFINE_string("attacker", "logreg", "Trained attacker: logreg (logistic regression) or gboost "
                    "(gradient boosting).")
flags.DEFINE_integer("folds", 5, "Cross-validation folds of the trained attacker.")
flags.DEFINE_integer("max_examples", 0, "Use at most this many members (and as many non-members); 0 = all members.")
flags.DEFINE_string("nonmembers", "auto", "Non-members: unused_train (training-pool examples the run's --max_train "
                    "left out; membership then was decided by a random shuffle), test (the test split, assumed "
                    "i.i.d. with the training split), or auto (unused_train if there are enough, else test).")
flags.DEFINE_integer("seed", 0, "Seed of the non-member subsample, the selection/evaluation halves and the attacker.")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected argument {argv[1]!r}; every input is a flag (see --help)", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.ERROR)
    from tfdprobust import audit, flagcheck
    from tfdprobust.audit import report
    from tfdprobust.errors import UsageError

    command = "python -m tfdprobust.audit " + " ".join(sys.argv[1:])
    try:
        flagcheck.finite_floats(FLAGS)
        if not FLAGS.model:
            raise UsageError("pass at least one --model (an export folder, e.g. saved_models/<run>)")
        if not FLAGS.out:
            raise UsageError("--out is required: the report folder, e.g. --out reports/audit")
        cfg = audit.AuditConfig(delta=FLAGS.delta, alpha=FLAGS.alpha, attacker=FLAGS.attacker, folds=FLAGS.folds,
                                max_examples=FLAGS.max_examples, nonmembers=FLAGS.nonmembers, seed=FLAGS.seed)
        payload = audit.run_audit(FLAGS.model, FLAGS.name, FLAGS.out, cfg, FLAGS.data_dir, FLAGS.dataset,
                                  command=command)
    except (UsageError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(report.text_table(payload["models"]))
    print()
    for r in payload["models"]:
        print(f"{r['name']}: {r['verdict']}")
    print(f"\n{report.CAVEAT}")
    bad = [r["name"] for r in payload["models"] if r["verdict"].startswith("VIOLATION")]
    if bad:
        print(f"error: the audit refutes the privacy claim of {', '.join(bad)} (see {FLAGS.out}/report.md)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
