"""The whole search: validate, lock, (overwrite), run the trials, report.

Order matters: everything is checked (flags, data, destination, the ledger, the planned
epsilon) before the first file is written, so a bad command leaves nothing behind and
the corrected one is accepted.
"""

import os
import shutil
from typing import Any, Callable, Dict, Optional

from tfdprobust import ledger as ledger_lib
from tfdprobust.errors import require
from tfdprobust.tuning import config as config_lib
from tfdprobust.tuning import privacy, reports
from tfdprobust.tuning.config import CONFIG_FILE, RESULTS_FILE, TuneConfig
from tfdprobust.tuning.lock import SearchLock, check_unlocked

def _roles():
    from keras_tuner.src.distribute import utils as dist_utils

    return dist_utils.has_chief_oracle(), dist_utils.is_chief_oracle()


def remaining_trials(cfg: TuneConfig) -> int:
    """Trials this search may still start (for the planned epsilon)."""
    total = cfg.max_trials or len(cfg.clip_grid) * len(cfg.lr_grid)
    if cfg.tuner == "grid":
        total = min(total, len(cfg.clip_grid) * len(cfg.lr_grid))
    done = 0
    if not cfg.overwrite and os.path.isdir(cfg.project_dir):
        done = sum(1 for n in os.listdir(cfg.project_dir)
                   if n.startswith("trial_") and os.path.exists(os.path.join(cfg.project_dir, n, "result.json")))
    return max(total - done, 0)


def prepare(cfg: TuneConfig, log: Callable[[str], None] = print):
    """All checks, no writes: returns ``(search data, ledger, plan)``."""
    from tfdprobust import run_config
    from tfdprobust.tuning import trial as trial_lib

    config_lib.check_destination(cfg)
    config_lib.check_tuning_dir(cfg)
    sd = trial_lib.load_search_data(cfg, log=log)
    n = len(sd.train)
    run_config.accounting_spec(cfg.run, n)  # delta < 1/N, batch <= N
    ledger = privacy.Ledger(cfg.tuning_dir, sd.fingerprint, store=cfg.run.ledger_dir)
    existing = [] if cfg.new_ledger else ledger.entries()
    steps = trial_lib.planned_steps(cfg.run, n)
    todo = remaining_trials(cfg)
    planned = privacy.planned_lines(cfg, n, steps, todo)
    plan = privacy.search_guarantee(existing, cfg.run.delta, cfg.run.accountant, planned)
    ledger_lib.check_budget(existing, planned, cfg.run.budget, cfg.run.delta, cfg.run.accountant, ledger.path)
    plan["remaining_trials"] = todo
    plan["existing_entries"] = len(existing)
    return sd, ledger, plan


def run_search(cfg: TuneConfig, log: Callable[[str], None] = print, on_trial_end=None) -> Optional[Dict[str, Any]]:
    """Runs (or resumes, or re-reports) the search. Workers return ``None``; the chief or
    a lone tuner returns the report (also written to ``search_results.json``)."""
    distributed, chief = _roles()
    worker = distributed and not chief
    lock = None
    if not worker:
        # Checked (no writes) first: a locked directory must be refused before anything else.
        check_unlocked(cfg.tuning_dir, cfg.project)
    sd, ledger, plan = prepare(cfg, log)
    if not worker:
        lock = SearchLock(cfg).acquire()
    try:
        return _run(cfg, sd, ledger, plan, worker, log, on_trial_end)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg, sd, ledger, plan, worker, log, on_trial_end):
    from tfdprobust import randomness
    from tfdprobust.tuning import oracles

    new_ledger_note = ""
    if not worker:
        if cfg.overwrite and os.path.exists(cfg.project_dir):
            shutil.rmtree(cfg.project_dir)
            log(f"--overwrite: deleted {cfg.project_dir}; the ledger of this data set ({ledger.path}) is kept "
                f"and still counts its {plan['existing_entries']} earlier entries")
        if cfg.new_ledger:
            retired = ledger.retire()
            new_ledger_note = (f"*** --new_ledger: STARTED A NEW LEDGER for this private data set; the previous "
                               f"executions ({retired or 'none recorded'}) are NOT composed into the guarantee "
                               "below ***")
            log(new_ledger_note)
        os.makedirs(cfg.project_dir, exist_ok=True)
        config_path = os.path.join(cfg.project_dir, CONFIG_FILE)
        if not config_lib.has_trials(cfg.project_dir) or not os.path.exists(config_path):
            reports.write_json_strict(config_path, cfg.identity())
            reports.write_hparams_config(cfg, os.path.join(cfg.project_dir, "logs"))
            if new_ledger_note:
                reports.write_json_strict(os.path.join(cfg.project_dir, "new_ledger.json"),
                                          {"note": new_ledger_note})
    if cfg.run.insecure_reproducible_noise:
        log(randomness.INSECURE_WARNING)
    n = len(sd.train)
    mech = validation_mechanism(cfg, sd)
    log(f"search: {cfg.tuner} over R in {list(cfg.clip_grid)} x eta in {list(cfg.lr_grid)} "
        f"({cfg.run.train.optimizer}), objective={cfg.objective}")
    log(f"validation: {mech}")
    log(f"fixed for every trial: sigma={cfg.run.train.dp.noise_multiplier:g}, {cfg.run.epochs} epoch(s), "
        f"batch {cfg.run.batch_size}, {cfg.run.sampling} sampling, N={n} training examples")
    eps = plan["epsilon"]
    log(f"planned: {plan['remaining_trials']} more trial(s); this data set's ledger holds "
        f"{plan['existing_entries']} entries; epsilon after this search = "
        f"{'NONE (insecure noise)' if eps is None else f'{eps:.4g}'} at delta={cfg.run.delta:g}")

    tuner = oracles.make_tuner(cfg, sd, ledger, log, on_trial_end)
    tuner.search()
    if worker:
        log(f"worker {tuner.tuner_id}: no more trials; the chief writes the report")
        return None
    if cfg.nondp_reference:
        run_references(cfg, sd, ledger, log)
    return report(cfg, sd, ledger, log, new_ledger_note)


def validation_mechanism(cfg: TuneConfig, sd) -> str:
    v = len(sd.validation)
    if sd.validation_is_public:
        return (f"public: {v} images from a public source ({sd.validation.source}); declared public, exact "
                "accuracies, no privacy cost")
    return (f"noisy_count: {v} images held out of the private pool; per trial the number correct (natural"
            + (" and robust" if cfg.val_attack is not None else "") + f") + Gaussian noise of std "
            f"{cfg.val_noise:g} (sensitivity 1), composed into epsilon; only noised counts are written, shown "
            "or used for selection")


def run_references(cfg: TuneConfig, sd, ledger, log=print) -> None:
    """Non-DP trainings, one per eta, resumable. NOT private: own table, outside the guarantee."""
    from tfdprobust.tuning import trial as trial_lib

    ref_dir = os.path.join(cfg.project_dir, "reference")
    os.makedirs(ref_dir, exist_ok=True)
    for lr in cfg.nondp_lr_grid or cfg.lr_grid:
        path = os.path.join(ref_dir, f"nondp_lr{lr:g}.json")
        if os.path.exists(path):
            continue
        log(f"non-DP reference (NOT private, outside the guarantee): eta={lr:g}")
        ids = {"search": os.path.abspath(cfg.project_dir), "trial_id": f"nondp_lr{lr:g}"}
        _, record, seconds = trial_lib.run_one(cfg, trial_lib.trial_config(cfg, cfg.run.train.dp.l2_clip, lr, dp=False),
                                      sd, ledger, ids, log)
        record["trial_id"] = ids["trial_id"]
        record["note"] = reports.NOT_COVERED
        reports.write_json_strict(path, record)
        trial_lib.write_timing(ref_dir, seconds, f"nondp_lr{lr:g}.{trial_lib.TIMING_FILE}")


def report(cfg: TuneConfig, sd, ledger, log=print, new_ledger_note: str = "") -> Dict[str, Any]:
    """Tables, plots, the one guarantee, exports; returns (and writes) the report."""
    from tfdprobust import accounting, run_config
    from tfdprobust.tuning import trial as trial_lib

    rows, refs = reports.collect_trials(cfg)
    require(rows, f"--tuning_dir={cfg.tuning_dir}: no trial finished; see the errors above")
    g = privacy.search_guarantee(ledger.entries(), cfg.run.delta, cfg.run.accountant)
    if not new_ledger_note and os.path.exists(os.path.join(cfg.project_dir, "new_ledger.json")):
        new_ledger_note = "note: this search started a new ledger (--new_ledger); earlier executions are not composed"
    spec = run_config.accounting_spec(cfg.run, len(sd.train))
    pd = cfg.project_dir
    mech = validation_mechanism(cfg, sd)
    eps_text = "NO DP GUARANTEE" if g["epsilon"] is None else f"search epsilon={g['epsilon']:.3g}, delta={cfg.run.delta:g}"
    preamble = (f"DP trials. {g['statement']}. Validation: {mech}.")
    reports.write_table(rows, os.path.join(pd, "results.csv"), os.path.join(pd, "results.md"),
                        head=reports.DP_HEAD, preamble=preamble)
    title = (f"{cfg.run.data.dataset}, {cfg.run.train.optimizer}, sigma={cfg.run.train.dp.noise_multiplier:g}; "
             f"{eps_text} (whole search, {cfg.validation} validation)")
    heatmap = reports.plot_heatmaps(rows, cfg, os.path.join(pd, "heatmap.png"), title)
    pareto = reports.plot_pareto(rows, refs, os.path.join(pd, "pareto.png"), title)
    out_refs = {}
    if refs:
        out_refs = {"references_csv": os.path.join(pd, "references.csv"),
                    "references_md": os.path.join(pd, "references.md")}
        reports.write_table(refs, out_refs["references_csv"], out_refs["references_md"],
                            columns=reports.REF_COLUMNS, head=reports.REF_HEAD,
                            preamble=f"{reports.NOT_COVERED}. No privacy: exact validation figures.")
    for row in rows:
        row.pop("score", None)
        row["score"] = trial_lib.score(row, cfg.objective)
    best = max(rows, key=lambda r: (r["score"], -int(r["trial_id"]) if str(r["trial_id"]).isdigit() else 0))
    exported = reports.export_best(cfg, rows, sd, g, log) if cfg.export_best else []
    mu = cfg.mean_trials_selection or float(len(cfg.clip_grid) * len(cfg.lr_grid))
    out = {"config": cfg.identity(), "guarantee": g, "validation_mechanism": mech,
           "trials": rows, "best_trial": best, "ledger": ledger.path, "new_ledger_note": new_ledger_note,
           "per_training_epsilon": accounting.epsilon(spec), "steps_per_trial": spec.total_steps,
           "num_train_examples": len(sd.train),
           "private_selection": privacy.private_selection(cfg, accounting.dp_event(spec), cfg.run.delta, mu),
           "heatmap": heatmap, "pareto": pareto, "table_csv": os.path.join(pd, "results.csv"),
           "table_md": os.path.join(pd, "results.md"), "tensorboard_logdir": os.path.join(pd, "logs"),
           "exported": exported, "references": [r["trial_id"] for r in refs], **out_refs,
           "references_note": reports.NOT_COVERED if refs else None}
    reports.write_json_strict(os.path.join(pd, RESULTS_FILE), out)
    log(reports.summary(out))
    return out
