"""The data of a search and what one trial does: train, count correct validation images, release.

The tuner measures robust accuracy in two places, both through
:func:`tfdprobust.ensemble.robust_accuracy`: :func:`robust_correct` (selection, the
``quick`` preset) and :func:`winner_robustness` (every exported winner, the
``standard`` preset plus the gradient-masking checks).
"""

import dataclasses
import os
import time
import zlib
from typing import Any, Callable, Dict, Tuple

import numpy as np

from tfdprobust import accounting, roles
from tfdprobust.errors import require
from tfdprobust.tuning import privacy
from tfdprobust.tuning.config import NATURAL, ROBUST, TuneConfig


@dataclasses.dataclass(frozen=True)
class SearchData:
    """Training part (private), validation part, test and public data, and provenance.

    Attributes:
        validation_is_public: ``True`` when the validation set comes from a public source.
        fingerprint: hash of the whole private data set (keys the ledger).
    """

    train: Any
    validation: Any
    test: Any
    public: Any
    notes: Tuple[str, ...]
    describe: Dict[str, str]
    validation_is_public: bool
    fingerprint: str


def load_search_data(cfg: TuneConfig, log: Callable[[str], None] = print) -> SearchData:
    """Loads the data, fingerprints the private pool and makes the validation set.

    ``noisy_count``: the validation images are carved out of the private training pool
    (never trained on), each example by its own keyed hash (:mod:`tfdprobust.roles`: an
    example is validation when its uniform is below ``validation_examples / n``, so about
    that many, and adding one example to the pool moves no other). ``public``: they are the *last* ``validation_examples`` images
    of the dataset's test split, disjoint from the first ``--max_test`` images that the
    exported model is reported on, and declared public (as the test split is).
    """
    from tfdprobust import data

    dcfg = cfg.run.data
    # The loader fingerprints the whole pool (before --max_train or any split): the ledger
    # is that of the data set, whatever slice a search uses.
    experiment = data.load_experiment_data(dataclasses.replace(dcfg, max_test=0), log=log,
                                           ledger_dir=cfg.run.ledger_dir)
    fp = experiment.fingerprint
    train = experiment.train
    full_test = experiment.test
    n_test = len(full_test) if dcfg.max_test == 0 else min(dcfg.max_test, len(full_test))
    v = cfg.validation_examples
    if cfg.validation == "public":
        require(n_test + v <= len(full_test),
                f"--validation=public takes --validation_examples={v} images from the end of the "
                f"{len(full_test)}-image test split, disjoint from the --max_test={dcfg.max_test or len(full_test)} "
                f"reported ones; lower --max_test or --validation_examples")
        test = full_test.take(np.arange(n_test), f", first {n_test}")
        validation = full_test.take(np.arange(len(full_test) - v, len(full_test)),
                                    f", last {v} images used as the PUBLIC validation set")
        describe = dict(experiment.describe(), train=train.source, test=test.source, validation=validation.source)
    else:
        n = len(train)
        require(v < n - cfg.run.batch_size,
                f"--validation_examples={v} leaves fewer than --batch_size={cfg.run.batch_size} of the {n} "
                "training images; lower it")
        held = np.zeros(n, bool)
        held[roles.below(train.x, train.y, roles.secret_key(fp, cfg.run.ledger_dir), "validation", v / n)] = True
        validation = train.take(np.flatnonzero(held), f", {int(held.sum())} held out for (noisy-count) validation "
                                "(per-example keyed hash)")
        train = train.take(np.flatnonzero(~held), f", {n - int(held.sum())} used for training")
        test = full_test.take(np.arange(n_test), f", first {n_test}")
        describe = dict(experiment.describe(), train=train.source, test=test.source, validation=validation.source)
    require(len(train) >= cfg.run.batch_size,
            f"--batch_size={cfg.run.batch_size} exceeds the {len(train)} training images; lower it")
    return SearchData(train, validation, test, experiment.public, tuple(experiment.notes), describe,
                      cfg.validation == "public", fp)


def trial_config(cfg: TuneConfig, l2_clip: float, learning_rate: float, dp: bool = True):
    """The RunConfig of one trial: the base config with R and eta replaced."""
    run = cfg.run
    dp_cfg = dataclasses.replace(run.train.dp, l2_clip=l2_clip, enabled=dp)
    if not dp:
        dp_cfg = dataclasses.replace(dp_cfg, insecure_noise_seed=None)
    train = dataclasses.replace(run.train, learning_rate=learning_rate, dp=dp_cfg)
    return dataclasses.replace(run, train=train, insecure_reproducible_noise=run.insecure_reproducible_noise and dp)


def score(record: Dict[str, Any], objective: str) -> float:
    """The scalar that ranks trials (``both``: natural + robust), from released figures only."""
    nat, rob = record.get(NATURAL), record.get(ROBUST)
    return {"robust": lambda: rob, "natural": lambda: nat, "both": lambda: rob + nat}[objective]()


def natural_correct(net, x, y) -> int:
    """Number of correctly classified clean images."""
    from tfdprobust import train_step

    return int(round(train_step.accuracy(net, x, y) * len(x)))


def robust_correct(net, x, y, attack) -> int:
    """Number of images still correct under the ``quick`` ensemble (APGD-CE + APGD-T) at
    ``attack``'s norm and radius: the ONE robust-accuracy hook of the tuner.

    It is :func:`tfdprobust.training.robust_evaluation`, the function behind the training
    CLI's and ``tfdprobust.evaluate``'s numbers, so a trial cannot win by masking gradients
    against a weak single PGD run.
    """
    from tfdprobust import training

    result = training.robust_evaluation(net, x, y, attack, preset="quick")
    return int(result.at(attack.eps).correct.sum())


WINNER_PRESET = "standard"


def winner_robustness(net, x, y, attack) -> Dict[str, Any]:
    """The ``standard`` preset (AutoAttack's APGD-CE, APGD-T, FAB-T, Square) plus every
    gradient-masking check on an exported winner: the tuner's other robust-accuracy hook.

    Selection maximizes a ``quick`` number over many trials, which favours whatever
    the quick attacks happen to miss; the winner is therefore re-evaluated with the
    strongest standard ensemble, and the masking checks say whether even that number
    can be trusted (:func:`tfdprobust.sanity.robust_accuracy_with_checks`). The attack's
    norm is evaluated at ``(0, eps)``; the other norm at the checks' default grid, so
    the l_inf and l2 masking checks both run.

    Returns:
        Test-set figures for the export's metadata: ``robust_accuracy`` (standard, at
        ``attack.eps``), its ``robust_ci95``, ``robust_after_each``, ``robust_standard``
        (every eps of both norms), ``sanity_checks`` and ``sanity_passed``.
    """
    from tfdprobust import ensemble, sanity

    norm = attack.norm
    grids = {f"eps_{norm}": (0.0, float(attack.eps))}
    preset = ensemble.get_preset(WINNER_PRESET).scaled(steps=attack.steps, restarts=attack.restarts)
    robust, checks = sanity.robust_accuracy_with_checks(
        lambda z: net(z, training=False), x, y, preset=preset, **grids)
    r = robust[norm]
    return {
        "robust_accuracy": r.accuracy(attack.eps), "robust_ci95": list(r.ci95(attack.eps)),
        "robust_preset": preset.name, "robust_examples": len(x),
        "robust_after_each": [{"attack": a, "accuracy": v} for a, v in r.at(attack.eps).after_each],
        "robust_standard": {k: v.to_dict() for k, v in robust.items()},
        "sanity_checks": [dataclasses.asdict(c) for c in checks],
        "sanity_passed": not sanity.failed(checks),
    }


def planned_steps(run_cfg, num_train: int) -> int:
    from tfdprobust import sampling

    return run_cfg.epochs * sampling.make_sampler(run_cfg.sampling, num_train, run_cfg.batch_size).steps_per_epoch


def train_trial(run_cfg, sd: SearchData):
    """Trains one trial on the training part with fresh secret noise and sampling
    (:func:`tfdprobust.training.train`); returns ``(Trained, spec)``."""
    from tfdprobust import run_config, training

    spec = run_config.accounting_spec(run_cfg, len(sd.train)) if run_cfg.train.dp.enabled else None
    return training.train(run_cfg, sd.train, sd.public, spec, log=lambda message: None), spec


def run_one(cfg: TuneConfig, run_cfg, sd: SearchData, ledger: privacy.Ledger, ids: Dict[str, Any],
            log: Callable[[str], None] = print) -> Tuple[Any, Dict[str, Any], float]:
    """One trial (or non-DP reference): ledger line, training, validation release.

    Returns:
        ``(net, record, seconds)``; the record holds only released figures: noisy validation
        accuracies (``noisy_count``) or exact public ones (``public``), never exact counts
        on private images, and no wall time. ``seconds`` (the training's wall time, which
        reflects the secret realised batch sizes) goes to :func:`write_timing` only.
    """
    dp = run_cfg.train.dp
    n = len(sd.train)
    steps = planned_steps(run_cfg, n)
    if dp.enabled:
        ledger.append(privacy.training_entry(run_cfg, n, steps, **ids))
    else:
        ledger.append(dict(ids, kind=privacy.NONDP, num_examples=n, steps=steps))
    start = time.time()
    trained, spec = train_trial(run_cfg, sd)
    seconds = time.time() - start
    net, x, y = trained.trainer.net, sd.validation.x, sd.validation.y
    counts = {NATURAL: natural_correct(net, x, y)}
    if cfg.val_attack is not None:
        counts[ROBUST] = robust_correct(net, x, y, cfg.val_attack)
    record = {
        "dp": dp.enabled, "optimizer": run_cfg.train.optimizer,
        "l2_clip": dp.l2_clip if dp.enabled else None, "learning_rate": run_cfg.train.learning_rate,
        "noise_multiplier": dp.noise_multiplier if dp.enabled else 0.0,
        "epsilon": accounting.epsilon(spec.replace(steps=trained.steps)) if dp.enabled else None,
        "steps": trained.steps, ROBUST: None,
    }
    if sd.validation_is_public or not dp.enabled:
        # Public images, or a non-DP reference (outside the guarantee, labelled so).
        record["validation"] = "public" if sd.validation_is_public else "exact (NOT private)"
        for key, c in counts.items():
            record[key] = c / len(x)
    else:
        ledger.append(privacy.validation_entry(len(counts), cfg.val_noise, **ids))
        insecure = run_cfg.insecure_seed
        record["validation"] = f"noisy_count (Gaussian, std {cfg.val_noise:g} per count)"
        for i, (key, c) in enumerate(counts.items()):
            seed = None if insecure is None else [insecure, zlib.crc32(str(ids.get("trial_id")).encode()), i]
            noisy = privacy.noisy_count(c, cfg.val_noise, seed)
            record[key.replace("accuracy", "noisy_count")] = noisy
            # Over the expected size (public), not the realised one (a count of private examples).
            record[key] = privacy.release_accuracy(noisy, cfg.validation_examples)
    del counts  # exact counts on private images are never kept
    return net, record, seconds


#: Wall times live here, beside a trial's covered ``result.json``, under a name that says so.
TIMING_FILE = "timing.NOT_COVERED_BY_EPSILON.json"


def write_timing(folder: str, seconds: float, name: str = TIMING_FILE) -> str:
    """Writes a trial's wall time to a file marked as outside the guarantee."""
    from tfdprobust.tuning import reports

    path = os.path.join(folder, name)
    reports.write_json_strict(path, {
        "seconds": round(seconds, 1),
        "note": "NOT covered by epsilon: wall time depends on the secret realised batch sizes; do not publish"})
    return path
