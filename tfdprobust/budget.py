"""``python -m tfdprobust.budget``: everything released about one private data set, composed.

Reads the data set's ledger in the user-level store (:mod:`tfdprobust.ledger`) and prints,
run by run, what each release was and the composed (epsilon, delta) of everything up to
it, with dp_accounting's RDP and PLD accountants (``ComposedDpEvent`` of the recorded
events). The data set is named as the training CLI names it (``--dataset``,
``--data_dir``, ``--tfds_dir``), or by ``--fingerprint``.

Example::

    python -m tfdprobust.budget --data_dir=../shared/data --delta=1e-5
"""

import datetime
from typing import Any, Dict, List, Optional

from absl import flags

from tfdprobust import cli, ledger

flags.DEFINE_string("dataset", "mnist", "Private dataset, as given to the training CLI.")
flags.DEFINE_string("data_dir", None, "Folder with its raw files, as given to the training CLI.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets data dir, as given to the training CLI.")
flags.DEFINE_string("fingerprint", None, "The data set's fingerprint (instead of loading it).")
flags.DEFINE_float("delta", 1e-5, "Delta of the composed guarantee.")
flags.DEFINE_string("ledger_dir", None, ledger.LEDGER_DIR_HELP)
FLAGS = flags.FLAGS


def _describe(entry: Dict[str, Any]) -> str:
    if entry["kind"] == ledger.DP_TRAINING:
        extra = entry.get("extra_noise_multipliers") or []
        return (f"DP training: {entry['sampling']} N={entry['num_examples']} B={entry['batch_size']} "
                f"steps={entry['steps']} sigma={entry['noise_multiplier']:.4g}"
                + (f" extra sigma={','.join(f'{s:.4g}' for s in extra)}" if extra else "")
                + (" INSECURE noise" if entry.get("insecure") else ""))
    if entry["kind"] == ledger.VALIDATION:
        return f"noisy validation counts: {entry['releases']} x Gaussian std {entry['noise']:g}"
    return "non-DP reference (NOT private: no guarantee covers it)"


def _epsilon(entries: List[Dict[str, Any]], delta: float, accountant: str) -> Optional[float]:
    try:
        return ledger.composed_epsilon(entries, delta, accountant)
    except (ValueError, NotImplementedError, TypeError):
        return float("nan")  # e.g. PLD cannot compose adaptive clipping under Poisson sampling


def _fmt(eps: Optional[float]) -> str:
    if eps is None:
        return "none (insecure)"
    return "n/a" if eps != eps else f"{eps:.4g}"


def report(entries: List[Dict[str, Any]], delta: float, path: str) -> Dict[str, Any]:
    """The printed lines and the composed epsilons (RDP and PLD) of ``entries``."""
    lines = [f"ledger: {path}", f"{len(entries)} release(s) recorded; epsilon at delta={delta:g}, composed up to "
             "each line (dp_accounting ComposedDpEvent):", "  #  when                 source    run  | release "
             "| composed eps RDP / PLD"]
    for i, entry in enumerate(entries):
        when = datetime.datetime.fromtimestamp(entry.get("time", 0)).strftime("%Y-%m-%d %H:%M:%S")
        so_far = entries[:i + 1]
        lines.append(f"{i + 1:3d}  {when}  {entry.get('source', '?'):<8}  {entry.get('run') or entry.get('search', '')}"
                     f"  | {_describe(entry)} | {_fmt(_epsilon(so_far, delta, 'rdp'))} / "
                     f"{_fmt(_epsilon(so_far, delta, 'pld'))}")
    rdp, pld = _epsilon(entries, delta, "rdp"), _epsilon(entries, delta, "pld")
    lines.append(f"total: ({_fmt(rdp)}, {delta:g})-DP (RDP), ({_fmt(pld)}, {delta:g})-DP (PLD) for everything "
                 "recorded about this data set")
    return {"lines": lines, "rdp": rdp, "pld": pld}


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    if not 0 < FLAGS.delta < 1:
        cli.fail(f"--delta must be in (0, 1), got {FLAGS.delta}")
    fp = FLAGS.fingerprint
    if not fp:
        from tfdprobust import data

        cfg = data.DataConfig(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, tfds_dir=FLAGS.tfds_dir,
                              public_examples=0)
        fp = data.load_experiment_data(cfg, log=lambda m: None, ledger_dir=FLAGS.ledger_dir).fingerprint
    book = ledger.DataLedger(ledger.resolve_dir(FLAGS.ledger_dir), fp)
    entries = book.entries()
    print(f"data set fingerprint: {fp}")
    if not entries:
        print(f"nothing recorded about this data set in {book.path}")
        return 0
    print("\n".join(report(entries, FLAGS.delta, book.path)["lines"]))
    return 0


if __name__ == "__main__":
    cli.run(main)
