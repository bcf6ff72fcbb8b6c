"""ResNet-20 on CIFAR-10 with DP-SGD and the adaptive DP optimizers (seed 002, seed 003).

    python -m tfdprobust.experiments.cifar10 --data_dir=/path/with/cifar-10-batches-py
    python -m tfdprobust.experiments.cifar10 --compare=all --target_epsilon=8 --table_dir=experiments/cifar10

One run (the default) trains ResNet-20 (He et al.) with group normalization and DP-SGD
on CIFAR-10 and prints accuracy, epsilon, time and memory, like the MNIST CLI: the flags
are the same (they are defined once, in :mod:`tfdprobust.experiments.mnist`), only the
defaults differ (:data:`DEFAULTS`).

``--compare`` runs the optimizer comparison of "Differential Privacy in Image
Classification using ResNet-20 and DP-SGD" (seed 002) and "Adaptive methods for DP-SGD"
(seed 003): SGD, Adam and RMSprop without DP, then DP-SGD, DP-Adam, DP-AdamBC, automatic
and adaptive clipping, every DP run calibrated to the same ``--target_epsilon``. Each
entry of :data:`COMPARISON` overrides ``--dp``, ``--optimizer``, ``--learning_rate`` and
``--clipping``; every other flag applies to all runs. It writes ``results.md``,
``results.csv`` and ``results.json`` (with the command and the wall time) to
``--table_dir``.

CIFAR-10 comes from TFDS (online or prepared in ``--tfds_dir``) or from the python-pickle
batches in ``--data_dir``. Offline without them, pass ``--dataset=fashion_mnist
--data_dir=<its IDX files>``: the same networks and optimizers, on another dataset.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import csv
import dataclasses
import sys
import time
from typing import Any, Dict, List, Tuple

from absl import flags, logging

from tfdprobust import cli
from tfdprobust.experiments import mnist  # noqa: F401 - defines the shared flags

FLAGS = flags.FLAGS
DP_LEARNING_RATE = 0.5
NON_DP_LEARNING_RATE = 0.1

#: Defaults that differ from the MNIST CLI's.
DEFAULTS = {
    "dataset": "cifar10", "model": "resnet20", "norm": "group", "public_dataset": "cifar100",
    "attack": "none", "eps": 0.0, "optimizer": "momentum", "l2_clip": 1.0, "noise": 1.0,
    "batch_size": 256, "epochs": 1, "export_dir": "saved_models",
    "clip_bias_cosine": True,  # the --compare table has a clip-bias cosine column
}
for _name, _value in DEFAULTS.items():
    FLAGS.set_default(_name, _value)

flags.DEFINE_list("compare", [], "Comparison entries to run (or 'all'): " + ", ".join(
    ["sgd", "adam", "rmsprop", "dp_sgd", "dp_adam", "dp_adambc", "dp_automatic", "dp_adaptive"]))
flags.DEFINE_string("table_dir", "experiments/cifar10", "Where --compare writes its tables.")
flags.adopt_module_key_flags(mnist)  # --helpshort lists the shared flags with these defaults


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the comparison: what it overrides."""

    dp: bool
    optimizer: str
    learning_rate: float
    clipping: str = "flat"


#: The optimizer comparison. Learning rates: the usual ones for the non-private optimizers
#: (SGD 0.1, Adam/RMSprop 1e-3); heavy-ball 0.5 for DP-SGD with C = 1 (clipped gradients
#: have norm <= 1, so DP-SGD wants a larger step, as on MNIST), the same for automatic and
#: adaptive clipping; Adam's 1e-3 for DP-Adam and DP-AdamBC.
COMPARISON: Dict[str, Entry] = {
    "sgd": Entry(False, "sgd", 0.1),
    "adam": Entry(False, "adam", 1e-3),
    "rmsprop": Entry(False, "rmsprop", 1e-3),
    "dp_sgd": Entry(True, "momentum", 0.5),
    "dp_adam": Entry(True, "adam", 1e-3),
    "dp_adambc": Entry(True, "dp_adambc", 1e-3),
    "dp_automatic": Entry(True, "momentum", 0.5, "automatic"),
    "dp_adaptive": Entry(True, "momentum", 0.5, "adaptive"),
}


def entry_config(base, name: str):
    """``base`` (a RunConfig from the flags) with the entry's overrides."""
    entry = COMPARISON[name]
    dp = dataclasses.replace(base.train.dp, enabled=entry.dp, clipping=entry.clipping if entry.dp else "flat")
    train = dataclasses.replace(base.train, optimizer=entry.optimizer, learning_rate=entry.learning_rate, dp=dp)
    run_name = f"{base.run_name or 'compare'}-{name}"
    return dataclasses.replace(base, train=train, run_name=run_name,
                               target_epsilon=base.target_epsilon if entry.dp else None)


def row(name: str, result: Dict[str, Any]) -> Dict[str, Any]:
    diag = result.get("diagnostics_not_covered_by_epsilon") or {}
    res = result["resources"]

    def mean(key):
        return diag.get(key, {}).get("mean") if isinstance(diag.get(key), dict) else None

    return {
        "entry": name, "dp": result["dp"], "optimizer": result["optimizer"], "clipping": result["clipping"],
        "learning_rate": result["learning_rate"], "noise_multiplier": result["noise_multiplier"],
        "epsilon": result["epsilon"], "clean_accuracy": result["clean_accuracy"], "steps": result["steps"],
        "train_seconds": round(res["train_seconds"], 1), "examples_per_second": res["examples_per_second"],
        "peak_host_rss_mb": res["peak_host_rss_mb"],
        "clipped_fraction*": mean("diag_clipped_fraction"), "clip_bias_cosine*": mean("diag_clip_bias_cosine"),
        "snr*": mean("diag_snr"), "final_C": (diag.get("clip_bound") or {}).get("last"),
    }


def write_tables(rows: List[Dict[str, Any]], out_dir: str, command: str, seconds: float,
                 header: Tuple[str, ...]) -> None:
    """``results.md`` (table + command + wall time), ``results.csv`` and ``results.json``."""
    from tfdprobust import export

    os.makedirs(out_dir, exist_ok=True)
    keys = list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = [*header, "", f"command: `{command}`", "", f"total wall time: {seconds:.0f} s", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    lines += ["", "Columns marked * are means over the steps of statistics of the private training batches: "
              "they are NOT covered by epsilon (for the researcher's eyes)."]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    export.write_json_atomic(os.path.join(out_dir, "results.json"),
                             {"command": command, "wall_seconds": seconds, "rows": rows})


def compare(base) -> int:
    from tfdprobust import runs

    names = compare_entries()
    command = "python -m tfdprobust.experiments.cifar10 " + " ".join(sys.argv[1:])
    start = time.time()
    rows = []
    for name in names:
        print(f"=== {name} ===", flush=True)
        result = runs.run(entry_config(base, name))
        print(runs.summary(result), flush=True)
        rows.append(row(name, result))
        write_tables(rows, FLAGS.table_dir, command, time.time() - start, _header(base))  # partial tables too
    print(open(os.path.join(FLAGS.table_dir, "results.md")).read())
    return 0


def compare_entries() -> List[str]:
    """The ``--compare`` entries, validated (before TensorFlow is imported)."""
    from tfdprobust.errors import require

    names = list(COMPARISON) if FLAGS.compare == ["all"] else FLAGS.compare
    for name in names:
        require(name in COMPARISON, f"--compare entry {name!r} is unknown; choose from {', '.join(COMPARISON)} or all")
    return names


def _header(base) -> Tuple[str, ...]:
    return (f"# Optimizer comparison: {base.model.name} ({base.model.norm}) on {base.data.dataset}",
            "", f"DP runs calibrated to epsilon = {base.target_epsilon} at delta = {base.delta} "
                f"({base.sampling} sampling, {base.accountant.upper()}), C = {base.train.dp.l2_clip:g}, "
                f"batch {base.batch_size}, {base.epochs} epoch(s).")


def main(argv):
    """One run, or the comparison with ``--compare``. Bad input: one line, exit 2."""
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    compare_entries()  # bad input fails in one line before TensorFlow loads
    if FLAGS.compare and FLAGS.resume:
        cli.fail("--resume continues one run and does not combine with --compare; resume each entry with its "
                 "--run_name=<name>-<entry> and without --compare")
    mnist.check_flags()
    if FLAGS.compare:
        from tfdprobust import flagcheck

        flagcheck.writable_dir(FLAGS.table_dir, "--table_dir")
    logging.set_verbosity(logging.ERROR)
    from tfdprobust import runs

    base = mnist.config_from_flags()
    if not FLAGS["learning_rate"].present:
        # ResNet-20 with C = 1: the MNIST CLI's 4.0 (tuned for C = 0.1) is far too large.
        base = dataclasses.replace(base, train=dataclasses.replace(
            base.train, learning_rate=DP_LEARNING_RATE if base.train.dp.enabled else NON_DP_LEARNING_RATE))
    if FLAGS.compare:
        return compare(base)
    result = runs.run(base)
    print(runs.summary(result))
    return 0


if __name__ == "__main__":
    cli.run(main)
