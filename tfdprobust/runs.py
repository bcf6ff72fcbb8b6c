"""One private and robust training run, end to end, as a library call.

:func:`run` composes the modules: load data (:mod:`~tfdprobust.data`), account
(:mod:`~tfdprobust.accounting`) and record the release in the data set's ledger
(:mod:`~tfdprobust.ledger`), train (:func:`tfdprobust.training.train`), evaluate clean and
robust accuracy on held-out data, then export a SavedModel with its metadata
(:mod:`~tfdprobust.export`) and write a results JSON. The CLI
``python -m tfdprobust.experiments.mnist`` is a thin wrapper around it.

Example:
    >>> cfg = RunConfig(data=DataConfig(max_train=500, max_test=200, public_examples=32),
    ...                 batch_size=100, export_dir=None)           # doctest: +SKIP
    >>> result = run(cfg)                                          # doctest: +SKIP
    >>> result["epsilon"], result["clean_accuracy"]                # doctest: +SKIP
"""

import dataclasses
import importlib.metadata
import os
from typing import Any, Callable, Dict, Optional

import tensorflow as tf

from tfdprobust import (accounting, checkpoint, data, diagnostics, distribute, export, ledger, models, randomness,
                        training)
from tfdprobust.run_config import (RunConfig, accounting_spec, default_run_name, guarantee, resolve_noise,
                                   unprotected_examples)


PACKAGES = ("tensorflow", "tensorflow-privacy", "dp-accounting", "cleverhans", "keras-tuner",
            "tensorflow-datasets", "numpy")


def package_versions() -> Dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Trains, evaluates and exports; returns the results dictionary (also written to JSON).

    The results hold epsilon (and per-epoch epsilons), the guarantee statement, clean and
    robust test accuracy, the data provenance, all settings and package versions. They
    hold no statistic of the private training batches (loss and accuracy on them are shown
    live in the progress bar only: epsilon does not cover them).
    """
    # MultiWorkerMirroredStrategy must configure TensorFlow before the first op runs.
    strategy = distribute.make_strategy(cfg.strategy)
    if not distribute.is_chief(strategy):
        # Other workers train their replicas; the chief alone evaluates, exports and writes.
        cfg = dataclasses.replace(cfg, export_dir=None, eval_attack=None, tensorboard_dir=None)
    # Fail on a taken or unwritable destination now, not after training.
    name = cfg.run_name or default_run_name(cfg)
    if cfg.export_dir is not None:
        export.check_destination(os.path.join(cfg.export_dir, name))
        export.check_destination(os.path.join(cfg.export_dir, name) + ".json")
    plan = checkpoint.plan_for(cfg, name)  # --resume: a checkpoint with the same settings exists
    given = cfg
    # --seed fixes data roles and initialization; noise and sampling stay secret.
    tf.keras.utils.set_random_seed(cfg.seed)
    experiment = data.load_experiment_data(cfg.data, log=log, ledger_dir=cfg.ledger_dir)
    for role, source in experiment.describe().items():
        log(f"data: {role:<6} {source}")
    cfg = resolve_noise(cfg, len(experiment.train))
    if cfg.pretrain is not None and cfg.pretrain.active:  # a bad source, layer or weights file: before any write
        from tfdprobust import pretrain

        shape = experiment.train.x.shape[1:]
        pretrain.check(cfg.pretrain, lambda: models.build_model(dataclasses.replace(cfg.model, input_shape=shape)),
                       cfg.data.dataset, shape)
    # Every check passed: only now is anything written. The claims stop a second run with this name.
    claims = export.claim_destinations(cfg.export_dir, name, [plan.folder] if plan is not None else [])
    try:
        result = _run_claimed(cfg, given, name, strategy, experiment, plan, log)
    finally:
        for claim in claims:
            claim.release()
    if plan is not None:
        checkpoint.remove(plan.folder)  # exported: the metadata records every step, the journal is done
    return result


def _run_claimed(cfg: RunConfig, given: RunConfig, name: str, strategy, experiment: data.ExperimentData,
                 plan: Optional[checkpoint.Plan], log: Callable[[str], None]) -> Dict[str, Any]:
    """:func:`run` after the data are loaded and the destinations claimed: train, evaluate, export."""
    n = len(experiment.train)
    checkpointing = checkpoint.start(plan, given, cfg, n, name, log) if plan is not None else None
    lost = list(checkpointing.journal.interrupted) if checkpointing is not None else []
    dp = cfg.train.dp
    spec = accounting_spec(cfg, n).replace(interrupted_steps=tuple(lost)) if dp.enabled else None
    if cfg.insecure_reproducible_noise and dp.enabled:
        log(randomness.INSECURE_WARNING)
    # ---- the data set's privacy budget (tfdprobust.ledger): --budget checked, this run recorded, before training
    # A resumed run was recorded (all its planned steps) by its first attempt; it adds only the
    # steps the attempt it resumes ran after that attempt's last checkpoint, which run again.
    release = spec
    if cfg.resume and spec is not None:
        release = spec.replace(steps=lost[-1], interrupted_steps=()) if lost else None
    if dp.enabled and distribute.is_chief(strategy) and release is not None:
        ledger.record_training(release, experiment.fingerprint, cfg.ledger_dir, cfg.budget, "training", name,
                               insecure=cfg.insecure_reproducible_noise)
    # ----
    log_dir = os.path.join(cfg.tensorboard_dir, name) if cfg.tensorboard_dir else None
    trained = training.train(cfg, experiment.train, experiment.public, spec, log, monitor=experiment.test, log_dir=log_dir,
                    checkpointing=checkpointing)
    trainer, history, steps, sampler = trained.trainer, trained.history, trained.steps, trained.sampler
    earlier_epsilons = (checkpointing.state.manifest.get("epsilon_per_epoch", [])
                        if checkpointing is not None and checkpointing.state is not None else [])
    metrics = (training.evaluate_net(trained.net, experiment.test, cfg.eval_attack, cfg.verbose, log,
                            preset=cfg.eval_preset, examples=cfg.eval_examples)
               if distribute.is_chief(strategy) else {})
    final_spec = spec.replace(steps=steps) if dp.enabled else None
    private = dp.enabled and not cfg.insecure_reproducible_noise

    result: Dict[str, Any] = {
        "dataset": cfg.data.dataset,
        "data_config": dataclasses.asdict(cfg.data),
        "model": dataclasses.asdict(cfg.model),
        "data": experiment.describe(),
        "data_notes": list(experiment.notes),
        "num_train_examples": n,
        "num_test_examples": len(experiment.test),
        "epochs": cfg.epochs,
        "steps": steps,
        # Steps killed attempts ran after their last checkpoint: composed into epsilon too.
        "steps_lost_in_interruptions": lost,
        "resumed_from_step": trained.resumed_from,
        "batch_size": cfg.batch_size,
        "sampling": cfg.sampling,
        "dp": dp.enabled,
        "private": private,
        "insecure_reproducible_noise": cfg.insecure_reproducible_noise,
        "dp_path": dp.path if dp.enabled else None,
        "noise_multiplier": dp.noise_multiplier if dp.enabled else 0.0,
        "l2_clip": dp.l2_clip if dp.enabled else None,
        "clipping": dp.clipping if dp.enabled else None,
        "clipping_settings": _clipping_settings(cfg) if dp.enabled else None,
        "delta": cfg.delta if dp.enabled else None,
        "accountant": cfg.accountant if dp.enabled else None,
        "adjacency": sampler.adjacency if dp.enabled else None,
        "target_epsilon": cfg.target_epsilon,
        # A run without a guarantee gets no epsilon at all (null in JSON), not a number.
        "epsilon": accounting.epsilon(final_spec) if private else None,
        "epsilon_per_epoch": earlier_epsilons + history.history.get("epsilon", []) if private else [],
        "guarantee": guarantee(cfg, final_spec),
        "unprotected": unprotected_examples(cfg) or None,
        "optimizer": cfg.train.optimizer,
        "learning_rate": cfg.train.learning_rate,
        "train_attack": dataclasses.asdict(cfg.train.attack) if cfg.train.robust else None,
        "adv_weight": cfg.train.adv_weight if cfg.train.robust else 0.0,
        "eval_attack": dataclasses.asdict(cfg.eval_attack) if cfg.eval_attack else None,
        "jit_compile": cfg.train.jit_compile,
        # Rows per chunk of the DP clipped sum (None: one pass), from --dp_chunk_rows or the
        # expected batch size: settings only.
        "dp_chunk_rows": trainer.chunk_rows if dp.enabled and dp.path == "vectorized" else None,
        # How each weight's per-example norm was computed: from the layer shapes and a timing
        # probe on synthetic data (tfdprobust.per_example.calibration), not from private data.
        "norm_methods": ({"methods": trainer.norm_methods, "source": "layer shapes and a timing probe on synthetic "
                          "data on this machine; not derived from private data"}
                         if dp.enabled and dp.path == "vectorized" else None),
        "seed": cfg.seed,
        "strategy": cfg.strategy,
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "workers": distribute.num_workers(strategy),
        "worker_index": distribute.worker_index(strategy),
        "versions": package_versions(),
        "precomputed_features": cfg.precompute_features,
        "recipe": ({"name": cfg.recipe, "overrides": dict(cfg.recipe_overrides)} if cfg.recipe else None),
        **metrics,
    }
    record = getattr(trainer, "public_pretraining", None)
    if record is not None:  # what was public, and that it is outside the accounting
        from tfdprobust import pretrain

        result["public_pretraining"] = record.as_dict()
        result["guarantee"] = pretrain.extend_guarantee(result["guarantee"], record)
    if cfg.export_dir is not None:
        # metadata.json gets `result` as it stands: nothing computed on private batches.
        path = os.path.join(cfg.export_dir, name)  # as given: recorded paths stay portable
        export.export_model(trained.net, path, result)
        result["export_path"] = path
        result["results_path"] = path + ".json"
    # Only the run JSON (beside the export) and the returned dict carry these. Timing depends
    # weakly on the realised batch sizes; the diagnostics are private-batch statistics.
    result["resources"] = {**(trained.resources or {}), "train_seconds": trained.seconds,
                           "note": "not in metadata.json: wall time depends on the (private) realised batch sizes"}
    if trained.diagnostics is not None:
        result[diagnostics.RESULT_KEY] = trained.diagnostics
    if cfg.export_dir is not None:
        export.write_json_atomic(result["results_path"], result)
    return result


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (portable logs)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _clipping_settings(cfg: RunConfig) -> Dict[str, Any]:
    """The knobs of the configured clipping strategy, and what its accounting composes."""
    dp = cfg.train.dp
    out: Dict[str, Any] = {"strategy": dp.clipping}
    if dp.clipping == "automatic":
        out.update(gamma=dp.auto_gamma, note="contribution C * g / (||g|| + gamma) < C (Bu et al. AUTO-S)")
    if dp.adaptive:
        out.update(initial_l2_clip=dp.l2_clip, target_quantile=dp.target_quantile,
                   quantile_learning_rate=dp.quantile_learning_rate, count_noise_std=cfg.train.count_noise_std,
                   count_noise_multiplier=cfg.train.extra_noise_multipliers[0],
                   note="the noised unclipped count of every step is composed into epsilon")
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary(result: Dict[str, Any]) -> str:
    """The short human-readable summary the CLI prints."""
    lines = []
    if "clean_accuracy" in result:
        lines.append(f"clean test accuracy : {result['clean_accuracy']:.4f}  ({result['num_test_examples']} test images)")
    else:  # a worker of a multi-worker run other than the chief
        lines.append(f"worker {result['worker_index']} of {result['workers']}: trained its replicas; the chief "
                     "(worker 0) evaluates and exports")
    if "robust_accuracy" in result:
        atk = result["eval_attack"]
        lo, hi = result["robust_ci95"]
        lines.append(f"robust accuracy     : {result['robust_accuracy']:.4f}  [95% CI {lo:.3f}, {hi:.3f}] "
                     f"({result['robust_preset']} ensemble: "
                     + ", ".join(step["attack"] for step in result["robust_after_each"][1:])
                     + f"; {atk['name'][4:]} eps={atk['eps']:g}, {result['robust_examples']} test images)")
    if result["private"]:
        lost = sum(result.get("steps_lost_in_interruptions") or [])
        steps = f"{result['steps']} steps" + (f" + {lost} lost in interrupted attempts" if lost else "")
        lines.append(f"epsilon             : {result['epsilon']:.4g} at delta={result['delta']:g} "
                     f"(sigma={result['noise_multiplier']:.4g}, {steps}, {result['sampling']} "
                     f"sampling, {result['adjacency']} adjacency, {result['accountant'].upper()})")
    lines.append(f"guarantee           : {result['guarantee']}")
    res = result.get("resources") or {}
    if res.get("epoch_seconds"):
        gpu = res.get("peak_gpu_memory_mb")
        lines.append(f"time and memory     : {res['train_seconds']:.1f} s training, "
                     f"{', '.join(f'{s:.1f}' for s in res['epoch_seconds'])} s per epoch, "
                     f"{res['examples_per_second']:.1f} examples/s, peak host RSS {res['peak_host_rss_mb']:.0f} MB"
                     + (f", peak GPU {gpu:.0f} MB" if gpu is not None else " (no GPU)"))
    diag = result.get(diagnostics.RESULT_KEY)
    if diag and diag.get("diag_clipped_fraction"):
        mean = {k: (diag[k]["mean"] if k in diag else None) for k in diagnostics.KEYS}
        lines.append("clipping diagnostics: NOT covered by epsilon (private batches): mean clipped fraction "
                     f"{_fmt(mean['diag_clipped_fraction'])}, median norm {_fmt(mean['diag_norm_p50'])}, "
                     + (f"clip-bias cosine {_fmt(mean['diag_clip_bias_cosine'])}, "
                        if mean["diag_clip_bias_cosine"] is not None else "clip-bias cosine off (--clip_bias_cosine), ")
                     + f"SNR {_fmt(mean['diag_snr'])}, "
                     f"final C {_fmt(diag['clip_bound']['last'])}")
    if "export_path" in result:
        lines.append(f"SavedModel          : {_shown(result['export_path'])}")
        lines.append(f"results JSON        : {_shown(result['results_path'])}")
    return "\n".join(lines)
