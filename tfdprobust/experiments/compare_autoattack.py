"""Our ``standard`` robust accuracy next to ART's AutoAttack, model by model, eps by eps.

The independent reference is the Adversarial Robustness Toolbox's ``AutoAttack`` with
APGD-CE, APGD-DLR (Croce & Hein 2020) and Square (Andriushchenko et al.), each with
ART's own implementation on a ``TensorFlowV2Classifier``, on the same test images.
A gap above 1 point (ours higher) means our evaluation misses points a standard attack
breaks.

    python -m tfdprobust.experiments.compare_autoattack \\
        --model reports/models/mnist_sgd --name sgd --data_dir ../shared/data \\
        --num_examples 500 --out experiments/evaluate/autoattack_comparison.json
"""

import json
import os
import sys
import time

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("model", None, "SavedModel directory or .keras/.h5 file (repeatable).")
flags.DEFINE_multi_string("name", None, "Display name per --model.")
flags.DEFINE_string("dataset", "mnist", "Test set (mnist, fashion_mnist, kmnist, cifar10).")
flags.DEFINE_string("data_dir", None, "Raw test files (see tfdprobust.evaluate).")
flags.DEFINE_integer("num_examples", 500, "Test images (the evaluation's seeded subset).")
flags.DEFINE_list("eps_linf", ["0.1", "0.2", "0.3"], "l_inf radii.")
flags.DEFINE_list("eps_l2", ["1.0", "2.0"], "l2 radii.")
flags.DEFINE_string("preset", "standard", "Our preset (quick or standard).")
flags.DEFINE_bool("art", True, "Run ART's AutoAttack next to ours (--noart: only our preset, e.g. to "
                  "re-check a recorded figure).")
flags.DEFINE_integer("art_restarts", 1, "Random restarts of ART's APGD-CE and APGD-DLR.")
flags.DEFINE_integer("art_square_queries", 5000, "Query budget of ART's Square.")
flags.DEFINE_string("out", None, "JSON file for the results (written at the end; also printed).")
flags.DEFINE_integer("seed", 0, "Example subset and attack seeds.")
flags.DEFINE_list("table_from", None, "Instead of attacking: print the markdown table of these result JSON "
                  "files (written by --out).")


def art_autoattack(model_fn, x, y, norm: str, eps: float, num_classes: int, restarts: int, queries: int,
                   batch_size: int = 500):
    """Per-example correctness under ART's AutoAttack (APGD-CE, APGD-DLR, Square)."""
    import numpy as np
    from tfdprobust.ensemble import import_art

    import_art()
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    from tfdprobust.ensemble import _predict, art_classifier

    clf = art_classifier(model_fn, x.shape[1:], num_classes)
    order = np.inf if norm == "linf" else 2
    # Croce & Hein's initial APGD step is 2 eps; ART's own default (0.1) is far too
    # small for l2 eps = 2 and would make the reference needlessly weak.
    kw = dict(norm=order, eps=eps, eps_step=2 * eps, max_iter=100, targeted=False,
              nb_random_init=restarts, batch_size=batch_size, verbose=False)
    members = [AutoProjectedGradientDescent(clf, loss_type="cross_entropy", **kw),
               AutoProjectedGradientDescent(clf, loss_type="difference_logits_ratio", **kw),
               SquareAttack(clf, norm=order, max_iter=queries, eps=eps, p_init=0.8, nb_restarts=1,
                            batch_size=batch_size, verbose=False)]
    aa = AutoAttack(clf, norm=order, eps=eps, eps_step=2 * eps, attacks=members, batch_size=batch_size)
    adv = aa.generate(x, y=np.eye(num_classes)[y])
    # ART's l2 Square can return NaN pixels (a zero window norm); those are not
    # adversarial examples, so count such points as not broken.
    bad = ~np.isfinite(adv).reshape(len(adv), -1).all(1)
    adv[bad] = x[bad]
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps * (1 + 1e-4) + 1e-6, f"ART returned points outside the ball ({size.max()})"
    return _predict(model_fn, adv, batch_size) == y


def _write(rows, source):
    if not FLAGS.out:
        return
    command = "python -m tfdprobust.experiments.compare_autoattack " + " ".join(sys.argv[1:])
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    tmp = FLAGS.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"command": command, "data": source, "rows": rows}, f, indent=1, default=str)
    os.replace(tmp, FLAGS.out)


def check_flags():
    """Every check that needs neither TensorFlow nor data (before the long run starts)."""
    from tfdprobust import data, flagcheck as fc
    from tfdprobust.errors import require
    from tfdprobust.evaluate.models import check_model_path

    for path in FLAGS.model:
        check_model_path(path)
    fc.choice(FLAGS, "dataset", data.TFDS_DATASETS[:4])
    fc.choice(FLAGS, "preset", fc.registered_names("tfdprobust.ensemble", "PRESETS"))
    fc.existing_dir(FLAGS.data_dir, "--data_dir", "the raw test files")
    fc.ranges(FLAGS, {"num_examples": ">=1", "art_restarts": ">=1", "art_square_queries": ">=1", "seed": ">=0"})
    # One norm may be left out (--eps_l2= re-checks an l_inf-only claim), not both.
    fc.list_numbers(FLAGS, "eps_linf", "(0,1]", allow_empty=True)
    fc.list_numbers(FLAGS, "eps_l2", ">0", allow_empty=True)
    require(any(e.strip() for e in (FLAGS.eps_linf or []) + (FLAGS.eps_l2 or [])),
               "--eps_linf and --eps_l2 are both empty; give radii for at least one norm")
    if FLAGS.out:
        fc.writable_parent(FLAGS.out, "--out")


def markdown_table(paths) -> str:
    """The rows of result JSON files as one markdown table (model, threat, ours, ART, gap,
    the accuracy after each of our attacks, wall times)."""
    lines = ["| model | threat | clean | ours (`standard`) [95% CI] | ART AutoAttack | ours − ART | "
             "ours after each attack | wall time ours (all ε of the norm) / ART |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for path in paths:
        with open(path) as f:
            rows = json.load(f)["rows"]
        for r in rows:
            sym = "ℓ∞" if r["norm"] == "linf" else "ℓ2"
            steps = ", ".join(f"{a} {v:.3f}" for a, v in r["ours_after_each"][1:])
            clean = f"{r['clean']:.3f}" if "clean" in r else "–"
            lines.append(f"| {r['model']} | {sym} ε = {r['eps']:g} | {clean} | {r['ours']:.3f} [{r['ours_ci95'][0]:.3f}, "
                         f"{r['ours_ci95'][1]:.3f}] | {r['art']:.3f} | {r['gap_points']:+.1f} pts | {steps} | "
                         f"{r['ours_seconds_all_eps']:.0f} s / {r['art_seconds']:.0f} s |")
    return "\n".join(lines)


def claim_table(paths) -> str:
    """Rows of --noart result files: our robust accuracy per eps, one column per model."""
    by_model = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["rows"]:
                by_model.setdefault(r["model"], {})[(r["norm"], r["eps"])] = r
    models = list(by_model)
    keys = sorted({k for rows in by_model.values() for k in rows})
    lines = ["| threat | " + " | ".join(f"{m} (`standard`, 95% CI)" for m in models) + " |",
             "|---|" + "---:|" * len(models)]
    for norm, eps in keys:
        cells = []
        for m in models:
            r = by_model[m].get((norm, eps))
            cells.append("not run" if r is None else
                         f"{r['ours']:.3f} [{r['ours_ci95'][0]:.3f}, {r['ours_ci95'][1]:.3f}]")
        lines.append(f"| {'ℓ∞' if norm == 'linf' else 'ℓ2'} ε = {eps:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.table_from:
        print(markdown_table(FLAGS.table_from) if FLAGS.art else claim_table(FLAGS.table_from))
        return
    from tfdprobust.errors import require

    require(FLAGS.model, "--model: give at least one model (or --table_from to print a table)")
    check_flags()
    import numpy as np
    import tensorflow as tf

    from tfdprobust import ensemble
    from tfdprobust.evaluate import data as edata
    from tfdprobust.evaluate import models as emodels

    x, y, source = edata.load_eval_data(FLAGS.dataset, FLAGS.data_dir, FLAGS.num_examples, FLAGS.seed)
    num_classes = int(y.max()) + 1
    names = FLAGS.name or []
    rows = []
    print(f"data: {source}; {len(x)} images", flush=True)
    for i, path in enumerate(FLAGS.model):
        m = emodels.load_model(path, names[i] if i < len(names) else None)
        for norm, grid in (("linf", FLAGS.eps_linf), ("l2", FLAGS.eps_l2)):
            grid = [float(e) for e in grid if e.strip()]
            if not grid:
                continue
            t = time.time()
            ours = ensemble.robust_accuracy(m.model_fn, x, y, FLAGS.preset, norm, grid, seed=FLAGS.seed,
                                           verbose=1)
            ours_s = time.time() - t
            for e in grid:
                row = dict(model=m.name, path=path, norm=norm, eps=e, clean=ours.clean_accuracy,
                           ours=ours.accuracy(e), ours_ci95=list(ours.ci95(e)),
                           ours_after_each=ours.at(e).after_each, ours_seconds_all_eps=ours_s)
                if not FLAGS.art:
                    rows.append(row)
                    _write(rows, source)
                    print(f"{m.name} {norm} eps={e:g}: ours({FLAGS.preset}) {row['ours']:.3f} "
                          f"[{row['ours_ci95'][0]:.3f}, {row['ours_ci95'][1]:.3f}]  (ours {ours_s:.0f} s for all eps)",
                          flush=True)
                    continue
                tf.random.set_seed(FLAGS.seed)
                np.random.seed(FLAGS.seed)
                t = time.time()
                ref = art_autoattack(m.model_fn, x, y, norm, e, num_classes, FLAGS.art_restarts,
                                     FLAGS.art_square_queries)
                both = ours.at(e).correct & ref
                row.update(art=float(ref.mean()), min_of_both=float(both.mean()),
                           gap_points=100 * (ours.accuracy(e) - float(ref.mean())), art_seconds=time.time() - t)
                rows.append(row)
                _write(rows, source)  # after every row: a long run keeps what it has
                print(f"{m.name} {norm} eps={e:g}: ours({FLAGS.preset}) {row['ours']:.3f}  ART AutoAttack "
                      f"{row['art']:.3f}  gap {row['gap_points']:+.1f} pts  both {row['min_of_both']:.3f}  "
                      f"(ours {ours_s:.0f} s for all eps, ART {row['art_seconds']:.0f} s)", flush=True)
    _write(rows, source)
    if FLAGS.art and rows:
        worst = max(r["gap_points"] for r in rows)
        print(f"largest gap (ours - ART): {worst:+.1f} points ({'OK' if worst <= 1.0 else 'ABOVE 1 POINT'})")


if __name__ == "__main__":
    cli.run(main)
