"""The tuner's command line: flags -> :class:`TuneConfig` -> :func:`run_search`.

Bad input prints one line ``error: ...`` naming the flag and the fix, exits 2, and
writes nothing (every check runs before the first write).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def define_flags():
    from absl import flags

    from tfdprobust import ledger
    from tfdprobust.tuning.grids import DEFAULT_VAL_NOISE

    f = flags
    f.DEFINE_string("dataset", "mnist", "Private dataset.")
    f.DEFINE_string("data_dir", None, "Folder with raw MNIST IDX / KMNIST npz files (e.g. ../shared/data).")
    f.DEFINE_string("tfds_dir", None, "TensorFlow Datasets data dir.")
    f.DEFINE_string("public_dataset", "kmnist", "Public dataset of the normalization batch (never the private one).")
    f.DEFINE_boolean("public_from_private", False, "Set the public normalization images aside from the private "
                     "training pool instead; the DP guarantee then does NOT cover them (the output says so).")
    f.DEFINE_integer("public_examples", 128, "Size of the public normalization batch.")
    f.DEFINE_integer("max_train", 0, "Use at most this many training images (0 = all), before the validation split.")
    f.DEFINE_integer("max_test", 1000, "Test images for the final evaluation of the exported model(s) (0 = all).")
    f.DEFINE_string("validation", "noisy_count", "How trials are scored: noisy_count (held out of the private "
                    "pool; each count of correct images gets Gaussian noise of std --val_noise, composed into "
                    "epsilon) or public (the last --validation_examples images of the test split, disjoint from "
                    "the reported ones, declared public; no privacy cost).")
    f.DEFINE_float("val_noise", DEFAULT_VAL_NOISE, "Std of the Gaussian noise on each validation count "
                   "(--validation=noisy_count; sensitivity 1).")
    f.DEFINE_integer("validation_examples", 500, "Validation images (never trained on).")
    f.DEFINE_string("model", "cnn", "Network: cnn or lenet.")
    f.DEFINE_string("norm", "public_bn", "none, public_bn or group.")
    f.DEFINE_string("activation", "relu", "relu or tanh.")
    f.DEFINE_string("clip_grid", "logspace:0.25:4:3", "Clipping norms R: comma list or logspace:lo:hi:n (the default is centred on the training CLI's C=1).")
    f.DEFINE_string("lr_grid", "logspace:1:16:3", "Learning rates eta: comma list or logspace:lo:hi:n (the default is centred on the training CLI's lr 4, chosen in experiments/defaults/).")
    f.DEFINE_string("objective", "robust", "robust (PGD accuracy), natural, or both (sum).")
    f.DEFINE_string("optimizer", "sgd", "sgd, momentum (heavy ball), adam, rmsprop or adagrad.")
    f.DEFINE_string("tuner", "grid", "grid, random, bayesian or hyperband.")
    f.DEFINE_integer("max_trials", None, "Trial budget for random/bayesian/hyperband.")
    f.DEFINE_string("tuning_dir", "tuning", "Parent folder of the search (resumed if it exists); also holds the "
                    "per-data-set privacy ledgers in .ledgers/.")
    f.DEFINE_string("project", "search", "Search name (sub-folder of --tuning_dir).")
    f.DEFINE_boolean("overwrite", False, "Delete this search's folder first. The privacy ledger of the data set "
                     "is kept: earlier executions still count.")
    f.DEFINE_boolean("new_ledger", False, "START A NEW PRIVACY LEDGER for this private data set: earlier "
                     "executions on it are no longer composed into the reported epsilon (the old ledger is kept "
                     "on disk, renamed). The output says so.")
    f.DEFINE_integer("epochs", 1, "Epochs per trial (fixed: decides epsilon).")
    f.DEFINE_integer("batch_size", 1000, "Expected batch size (fixed; the training CLI's default).")
    f.DEFINE_float("noise", 7.1, "Noise multiplier sigma (fixed).")
    f.DEFINE_float("delta", 1e-5, "Target delta.")
    f.DEFINE_string("sampling", "poisson", "poisson (add-or-remove-one) or shuffle (replace-one).")
    f.DEFINE_string("accountant", "rdp", "Privacy accountant (dp_accounting): rdp or pld (tighter).")
    f.DEFINE_string("dp_path", "vectorized", "vectorized or tf_privacy.")
    f.DEFINE_float("eps", 0.1, "l_inf radius of training and validation PGD.")
    f.DEFINE_integer("steps", 10, "PGD iterations during training (the training CLI's default).")
    f.DEFINE_float("adv_weight", 0.5, "Per-example loss = (1-w) clean + w adversarial (the training CLI's default).")
    f.DEFINE_integer("val_steps", 10, "PGD iterations for the validation robust accuracy.")
    f.DEFINE_integer("eval_steps", 100, "APGD iterations of each attack of the standard ensemble that scores "
                    "exported winners on the test set (AutoAttack's own: 100).")
    f.DEFINE_boolean("nondp_reference", False, "Also train non-DP references (one per eta) on the private data. "
                     "They are NOT private: own table (references.md), outside the guarantee.")
    f.DEFINE_string("nondp_lr_grid", None, "Learning rates of the non-DP references (default: --lr_grid).")
    f.DEFINE_integer("export_best", 1, "Export this many best DP trials as SavedModels (0 = none).")
    f.DEFINE_float("selection_mean_trials", None, "Mean of K for the private-selection planning figure "
                   "(default: grid size).")
    f.DEFINE_integer("seed", 0, "Seed of initialization, data splits and attack starts; never noise or sampling "
                     "(those come from OS entropy, fresh every trial).")
    f.DEFINE_boolean("insecure_reproducible_noise", False, "Replay DP noise, batch sampling and validation noise "
                     "from --seed. INSECURE: the search then has no DP guarantee, and its output says so.")
    f.DEFINE_integer("verbose", 0, "Keras verbosity per trial.")
    ledger.define_flags(f)


def check_flags():
    """Every check that needs no data and no TensorFlow: numbers, grids, names, flag
    combinations, the destination and the lock. Runs first, so bad input fails at once."""
    from absl import flags

    from tfdprobust.errors import require
    from tfdprobust.tuning import grids
    from tfdprobust.tuning.lock import check_unlocked

    from tfdprobust import datasize
    from tfdprobust import flagcheck as fc
    from tfdprobust.data import DataConfig

    F = flags.FLAGS
    fc.finite_floats(F)
    for name in ("noise", "delta", "eps", "adv_weight", "val_noise", "selection_mean_trials"):
        grids.require_finite(getattr(F, name), name)
    fc.choice(F, "model", fc.registered_names("tfdprobust.models", "MODELS"))
    fc.choice(F, "norm", fc.constant("tfdprobust.models", "NORMS"))
    fc.choice(F, "activation", ("relu", "tanh"))
    fc.choice(F, "optimizer", fc.registered_names("tfdprobust.optimizers", "OPTIMIZERS"))
    fc.choice(F, "dp_path", fc.constant("tfdprobust.train_step", "DP_PATHS"))
    fc.choice(F, "sampling", fc.registered_names("tfdprobust.sampling", "SAMPLERS"))
    fc.choice(F, "accountant", fc.registered_names("tfdprobust.accounting", "ACCOUNTANTS"))
    require(not (F.dp_path == "tf_privacy" and F.sampling == "poisson"),
            "--dp_path=tf_privacy divides by the realised Poisson batch size, which leaks it; use "
            "--dp_path=vectorized or --sampling=shuffle")
    # names, the public/private split and --data_dir (NumPy only)
    data_cfg = DataConfig(dataset=F.dataset, public_dataset=F.public_dataset,
                          public_examples=F.public_examples if F.norm == "public_bn" else 0,
                          public_from_private=F.public_from_private, data_dir=F.data_dir, tfds_dir=F.tfds_dir,
                          max_train=F.max_train, max_test=F.max_test, seed=F.seed)
    require(F.noise > 0, f"--noise must be > 0 (the tuner searches DP trainings), got {F.noise}")
    require(0 < F.delta < 1, f"--delta must be in (0, 1), got {F.delta}")
    require(F.eps >= 0, f"--eps must be >= 0, got {F.eps}")
    require(0 <= F.adv_weight <= 1, f"--adv_weight must be in [0, 1], got {F.adv_weight}")
    require(F.val_noise > 0, f"--val_noise must be > 0, got {F.val_noise}")
    for name in ("epochs", "batch_size", "validation_examples", "val_steps", "eval_steps"):
        require(getattr(F, name) >= 1, f"--{name} must be >= 1, got {getattr(F, name)}")
    for name in ("steps", "max_train", "max_test", "public_examples", "export_best", "seed"):
        require(getattr(F, name) >= 0, f"--{name} must be >= 0, got {getattr(F, name)}")
    require(F.max_trials is None or F.max_trials >= 1, f"--max_trials must be >= 1, got {F.max_trials}")
    require(F.objective in grids.OBJECTIVES,
            f"--objective={F.objective!r} is unknown; choose one of {', '.join(grids.OBJECTIVES)}")
    require(F.tuner in grids.TUNER_NAMES,
            f"--tuner={F.tuner!r} is unknown; choose one of {', '.join(grids.TUNER_NAMES)}")
    require(F.tuner == "grid" or F.max_trials is not None,
            f"--tuner={F.tuner} needs --max_trials >= 1 (the number of trials to run)")
    require(F.validation in grids.VALIDATIONS,
            f"--validation={F.validation!r} is unknown; choose noisy_count (DP-noised counts, the default) "
            "or public (a validation set from a public source)")
    require(not (F.validation == "public" and F["val_noise"].present),
            f"--val_noise={F.val_noise:g} has no effect with --validation=public (nothing is noised); drop "
            "--val_noise or use --validation=noisy_count")
    require(not (F.nondp_lr_grid and not F.nondp_reference),
            "--nondp_lr_grid is set but --nondp_reference is off; pass --nondp_reference or drop --nondp_lr_grid")
    require(F.objective == "natural" or F.eps > 0,
            f"--objective={F.objective} needs a validation attack, but --eps=0; set --eps > 0 or --objective=natural")
    require(not (F.new_ledger and F.insecure_reproducible_noise),
            "--new_ledger with --insecure_reproducible_noise: an insecure search has no guarantee to start a "
            "ledger for; drop one of them")
    fc.refuse_ignored(F, [
        *[(name, F.norm != "public_bn", f"--norm={F.norm} uses no public data")
          for name in ("public_dataset", "public_examples", "public_from_private")],
        ("val_steps", F.eps == 0, "--eps=0 runs no validation attack"),
    ])
    # The flags that depend on the data's size, from file headers, before any decoding.
    noisy_count = F.validation == "noisy_count"
    datasize.check_run_sizes(data_cfg, F.batch_size, F.delta, held_out=F.validation_examples if noisy_count else 0,
                             held_out_flag="--validation_examples")
    tests = datasize.test_sizes(data_cfg)
    require(noisy_count or not tests or any(min(F.max_test or t, t) + F.validation_examples <= t for t in tests),
            f"--validation=public takes --validation_examples={F.validation_examples} images from the end of the "
            f"{max(tests or (0,))}-image test split, disjoint from the --max_test={F.max_test} reported ones; pass "
            f"--validation_examples={max(max(tests or (0,)) - F.max_test, 0)} or less, or lower --max_test")
    grids.parse_grid(F.clip_grid, "--clip_grid")
    grids.parse_grid(F.lr_grid, "--lr_grid")
    if F.nondp_lr_grid:
        grids.parse_grid(F.nondp_lr_grid, "--nondp_lr_grid")
    require(bool(F.tuning_dir), "--tuning_dir is empty; give a folder for the search")
    require(bool(F.project) and os.sep not in F.project and not F.project.startswith("."),
            f"--project={F.project!r} must be a plain folder name (no '/', not starting with '.')")
    grids.check_destination(F)
    grids.check_search_folder(F.tuning_dir, F.project, F.overwrite, F.new_ledger)
    distributed = bool(os.environ.get("KERASTUNER_ORACLE_IP"))
    if not distributed or os.environ.get("KERASTUNER_TUNER_ID", "chief") == "chief":
        check_unlocked(F.tuning_dir, F.project)


def config_from_flags():
    """A validated :class:`TuneConfig` from the absl flags (no data loaded, no writes)."""
    from absl import flags

    from tfdprobust import attacks, run_config
    from tfdprobust.data import DataConfig
    from tfdprobust.errors import require
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig
    from tfdprobust.tuning.config import OBJECTIVES, TuneConfig, parse_grid

    F = flags.FLAGS
    clip_grid = parse_grid(F.clip_grid, "--clip_grid")
    lr_grid = parse_grid(F.lr_grid, "--lr_grid")
    require(F.objective in OBJECTIVES, f"--objective={F.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    require(F.objective == "natural" or F.eps > 0,
            f"--objective={F.objective} needs a validation attack, but --eps=0; set --eps > 0 or --objective=natural")
    attack = (attacks.AttackConfig(name="pgd_linf", eps=F.eps, steps=F.steps, random_start=True)
              if F.steps > 0 and F.eps > 0 else None)
    train = TrainConfig(optimizer=F.optimizer, learning_rate=lr_grid[0], attack=attack, adv_weight=F.adv_weight,
                        dp=DPConfig(l2_clip=clip_grid[0], noise_multiplier=F.noise, path=F.dp_path))
    run = run_config.RunConfig.make(
        train=train, batch_size=F.batch_size,
        data=DataConfig(dataset=F.dataset, public_dataset=F.public_dataset,
                        public_examples=F.public_examples if F.norm == "public_bn" else 0,
                        public_from_private=F.public_from_private, data_dir=F.data_dir,
                        tfds_dir=F.tfds_dir, max_train=F.max_train, max_test=F.max_test, seed=F.seed),
        model=ModelConfig(name=F.model, norm=F.norm, activation=F.activation),
        epochs=F.epochs, sampling=F.sampling, delta=F.delta, accountant=F.accountant,
        insecure_reproducible_noise=F.insecure_reproducible_noise,
        eval_attack=(attacks.AttackConfig(name="pgd_linf", eps=F.eps, steps=F.eval_steps, random_start=True)
                     if F.eps > 0 else None),
        export_dir=None, seed=F.seed, verbose=F.verbose, ledger_dir=F.ledger_dir, budget=F.budget)
    val_attack = (attacks.AttackConfig(name="pgd_linf", eps=F.eps, steps=F.val_steps, random_start=True)
                  if F.eps > 0 else None)
    return TuneConfig(run=run, clip_grid=clip_grid, lr_grid=lr_grid, objective=F.objective, tuner=F.tuner,
                      max_trials=F.max_trials, tuning_dir=F.tuning_dir, project=F.project,
                      validation=F.validation, val_noise=F.val_noise,
                      validation_examples=F.validation_examples, val_attack=val_attack,
                      nondp_reference=F.nondp_reference,
                      nondp_lr_grid=parse_grid(F.nondp_lr_grid, "--nondp_lr_grid") if F.nondp_lr_grid else None,
                      export_best=F.export_best, overwrite=F.overwrite, new_ledger=F.new_ledger,
                      mean_trials_selection=F.selection_mean_trials)


def main(argv):
    from absl import logging

    from tfdprobust.errors import UsageError

    if len(argv) > 1:
        print(f"error: unexpected argument {argv[1]!r}; every setting is a --flag (see --help)", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.ERROR)
    start = time.time()
    try:
        check_flags()  # before TensorFlow is imported
        from tfdprobust.tuning.search import run_search

        out = run_search(config_from_flags())
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"wall time           : {time.time() - start:.0f} s")
    return 0


def run() -> None:
    """Defines the flags and runs :func:`main` through :func:`tfdprobust.cli.run` (a bad
    flag is one line and exit status 2, like every other CLI)."""
    from absl import flags

    from tfdprobust import cli as common_cli

    define_flags()
    # absl's --helpshort lists the main module's key flags; the flags are defined here.
    for flag in flags.FLAGS.get_flags_for_module(__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    common_cli.run(main)
