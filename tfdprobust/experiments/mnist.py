"""Train an MNIST model that is differentially private and adversarially robust.

    python -m tfdprobust.experiments.mnist --noise=7.1
    python -m tfdprobust.experiments.mnist --data_dir=../shared/data     # offline, real data

Trains with DP-SGD, PGD adversarial training and public-data batch normalization (one
epoch by default), prints clean and PGD accuracy on held-out data and epsilon, and
exports a SavedModel plus a results JSON under ``--export_dir``. ``--help`` lists the flags.
This file only turns flags into configs; the work is :func:`tfdprobust.runs.run`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-probe noise on CPU machines

from absl import flags, logging

from tfdprobust import cli, ledger, pretrain_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("recipe", None, "Start from a named configuration of tfdprobust.recipes (e.g. "
                    "scatternet_fmnist_eps3); flags given explicitly override its values, and the results record "
                    "the recipe and the overrides.")
# Data
flags.DEFINE_string("dataset", "mnist", "Private dataset (TFDS name or raw files in --data_dir).")
flags.DEFINE_string("data_dir", None, "Folder with raw MNIST IDX .gz / KMNIST .npz files (e.g. ../shared/data).")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets data dir.")
flags.DEFINE_string("public_dataset", "kmnist", "Public dataset the normalization batch comes from (never the private "
                    "one): kmnist, mnist, fashion_mnist, cifar10 or sklearn_digits (bundled with scikit-learn; "
                    "the fallback when the chosen one is not available).")
flags.DEFINE_boolean("public_from_private", False, "Set the public normalization images aside from the private "
                     "training pool instead; the DP guarantee then does NOT cover them (the output says so).")
flags.DEFINE_integer("public_examples", 128, "Size of the public normalization batch.")
flags.DEFINE_integer("max_train", 0, "Use at most this many training examples (0 = all).")
flags.DEFINE_integer("max_test", 0, "Evaluate on at most this many test examples (0 = all).")
# Model
flags.DEFINE_string("model", "cnn", "Network: cnn (SIDP/Opacus MNIST CNN), lenet, lenet_2fc (seed 004), resnet20 (He et al. CIFAR "
                    "ResNet-20, functional), tempered_cnn (Papernot et al. tempered-sigmoid CIFAR CNN) or scatternet_cnn (Tramer & "
                    "Boneh ScatterNet features + CNN, 28x28 inputs).")
flags.DEFINE_string("norm", "public_bn", "Normalization: none, public_bn (statistics from public data) or group.")
flags.DEFINE_string("activation", "relu", "Hidden activation: relu or tanh.")
flags.DEFINE_integer("groups", 4, "Preferred number of groups of --norm=group (the largest divisor of the channel "
                     "count not above it is used).")
flags.DEFINE_boolean("precompute_features", False, "Apply the model's fixed features (the scattering of "
                     "scatternet_*) to the data once, train the rest on them and export the full model "
                     "(tfdprobust.precompute); needs --attack=none.")
flags.DEFINE_boolean("weight_standardization", False, "Standardize every convolution kernel (resnet20, "
                     "tempered_cnn).")
# Optimization and privacy
flags.DEFINE_integer("epochs", 1, "Passes over the private data.")
flags.DEFINE_integer("batch_size", 1000, "(Expected) batch size.")
flags.DEFINE_float("learning_rate", None, "Learning rate eta (default: 4.0 with --dp, where gradients are clipped to "
                   "--l2_clip; 0.1 with --nodp).")
flags.DEFINE_string("optimizer", "sgd", "sgd, momentum (heavy ball 0.9), adam, rmsprop, adagrad or dp_adambc "
                    "(Adam with the DP-noise variance (sigma C / B)^2 removed from its second moment; needs --dp).")
flags.DEFINE_boolean("dp", True, "Train with DP-SGD; --nodp trains the non-private baseline.")
flags.DEFINE_string("dp_path", "vectorized", "vectorized (fast per-example path) or tf_privacy (its DP optimizers).")
flags.DEFINE_float("l2_clip", 1.0, "Per-example gradient clipping norm C (the full-size sweep in experiments/defaults/ "
                   "chose C = 1 with lr 4 and batch 1000).")
flags.DEFINE_float("noise", 7.1, "Noise multiplier sigma (noise std = sigma * C).")
flags.DEFINE_float("delta", 1e-5, "Target delta; must be < 1/N.")
flags.DEFINE_float("target_epsilon", None, "Calibrate sigma to this epsilon (overrides --noise).")
flags.DEFINE_string("sampling", "poisson", "Batches: poisson (add-or-remove-one, amplified guarantee) or shuffle "
                    "(replace-one adjacency, no amplification).")
flags.DEFINE_string("accountant", "rdp", "Privacy accountant (dp_accounting): rdp or pld (tighter).")
flags.DEFINE_string("clipping", "flat", "Per-example clipping: flat, per_layer, automatic (Bu et al.: C g / (||g|| + "
                    "gamma)) or adaptive (Andrew et al.: C tracks --target_quantile from noised counts, composed "
                    "into epsilon; --l2_clip is the initial C).")
flags.DEFINE_float("auto_gamma", 0.01, "gamma of --clipping=automatic.")
flags.DEFINE_float("target_quantile", 0.5, "--clipping=adaptive: target fraction of unclipped examples.")
flags.DEFINE_float("quantile_learning_rate", 0.2, "--clipping=adaptive: step of the geometric update of C.")
flags.DEFINE_float("count_noise", None, "--clipping=adaptive: noise std on the unclipped count (default batch "
                   "size / 20).")
flags.DEFINE_boolean("clip_bias_cosine", False, "Also log the cosine between the clipped and the unclipped gradient "
                     "sum each step (a private diagnostic; costs a second weighted sum per layer).")
flags.DEFINE_integer("dp_chunk_rows", None, "Run the DP clipped sum over the batch in chunks of at most this many rows "
                     "(whole examples with their clean and adversarial rows): exact, and it bounds the DP step's extra "
                     "memory. 0: one pass. Default: chunks of 128 rows when a batch has more than 256 expected rows "
                     "(e.g. B = 250 with PGD), else one pass (docs/performance.md).")
flags.DEFINE_boolean("jit_compile", False, "Compile the train step (attack loop included) with XLA. Off by default: "
                     "2-3x slower on the CPUs measured (docs/performance.md); same results up to float rounding.")
# Adversarial training
flags.DEFINE_string("attack", "pgd_linf", "Training attack: none, pgd_linf or pgd_l2.")
flags.DEFINE_float("eps", 0.1, "Attack radius (pixel scale [0, 1]).")
flags.DEFINE_float("step_size", None, "Attack step size (default min(eps, 2.5 eps / steps)).")
flags.DEFINE_integer("steps", 10, "Attack iterations during training.")
flags.DEFINE_boolean("random_start", True, "Start PGD from a random point in the eps-ball.")
flags.DEFINE_float("adv_weight", 0.5, "Per-example loss = (1-w) clean + w adversarial, combined before clipping.")
# Evaluation and export
flags.DEFINE_string("eval_preset", "quick", "Attack ensemble of the reported robust accuracy (tfdprobust.ensemble): "
                    "quick (APGD-CE + APGD-T) or standard (+ FAB-T, Square); the same function as tfdprobust.evaluate.")
flags.DEFINE_integer("eval_steps", 100, "APGD iterations of each attack of the ensemble.")
flags.DEFINE_integer("eval_restarts", 1, "APGD restarts of each attack of the ensemble.")
flags.DEFINE_integer("eval_examples", 1000, "Test images attacked for the robust accuracy (0 = all); clean accuracy "
                     "uses the whole test split.")
flags.DEFINE_string("export_dir", "saved_models", "Where the SavedModel and results JSON go.")
flags.DEFINE_string("run_name", None, "Export folder name (default: derived from the settings).")
flags.DEFINE_integer("seed", 0, "Seed of initialization, data splits and attack starts. DP noise and batch "
                     "sampling never use it: they come from OS entropy, fresh every run.")
flags.DEFINE_boolean("insecure_reproducible_noise", False, "Replay DP noise and batch sampling from --seed. "
                     "INSECURE: the run then has no DP guarantee, and its output and metadata say so.")
flags.DEFINE_integer("verbose", 1, "1 = progress bars, 0 = quiet.")
flags.DEFINE_string("strategy", "none", "Data-parallel DP training on tf.distribute: none (one device), mirrored (all "
                    "local GPUs or logical CPU devices) or multi_worker (one process per worker, cluster in TF_CONFIG); "
                    "--batch_size is the global expected batch.")
flags.DEFINE_integer("checkpoint_every", 1, "Checkpoint the weights, optimizer state, clip bound and step count every "
                     "this many epochs and after the last one, atomically, into <checkpoint_dir>/<run_name>.checkpoint "
                     "(removed once the run has exported); each step is also counted there before it runs, so "
                     "--resume can account the steps after the last checkpoint. 0 = off; needs --strategy=none.")
flags.DEFINE_string("checkpoint_dir", None, "Parent folder of the run's checkpoint folder (default: --export_dir).")
flags.DEFINE_boolean("resume", False, "Continue the killed run --run_name from its newest checkpoint (same flags). "
                     "Epsilon also composes the steps it ran after that checkpoint: their noise was drawn.")
flags.DEFINE_string("tensorboard_dir", None, "Write per-step clipping diagnostics (private: not covered by epsilon) "
                    "to <tensorboard_dir>/<run name> for TensorBoard.")
ledger.define_flags(flags)
pretrain_flags.define_flags(flags)  # --public_pretrain, --pretrained_weights, --freeze, ...

ATTACK_CHOICES = ("none", "pgd_linf", "pgd_l2")
# Chosen by the one-epoch sweep on full Fashion-MNIST at sigma = 7.1 (experiments/defaults/):
# plain SGD, batch 1000, lr 4, C = 1. What matters is the step lr * C / (1 - momentum); the
# old momentum 0.9 / lr 4 / C 0.1 / batch 250 recipe diverged at full size. Clipped gradients
# are at most C, so DP-SGD wants a learning rate far above the non-private one.
DP_LEARNING_RATE = 4.0
NON_DP_LEARNING_RATE = 0.1


def data_config():
    """The :class:`tfdprobust.data.DataConfig` of the flags (NumPy only: no TensorFlow)."""
    from tfdprobust.data import DataConfig

    return DataConfig(dataset=FLAGS.dataset, public_dataset=FLAGS.public_dataset,
                      public_examples=FLAGS.public_examples if FLAGS.norm == "public_bn" else 0,
                      public_from_private=FLAGS.public_from_private,
                      data_dir=FLAGS.data_dir, tfds_dir=FLAGS.tfds_dir, max_train=FLAGS.max_train,
                      max_test=FLAGS.max_test, seed=FLAGS.seed)


def check_flags():
    """Every check that needs neither TensorFlow nor data: numbers, names, flag
    combinations, the data folder and the destinations. Runs first, so bad input fails
    within a second; the configs check everything again (and the data-dependent rest)."""
    from tfdprobust import datasize
    from tfdprobust import flagcheck as fc
    from tfdprobust.errors import require

    apply_recipe()
    fc.finite_floats(FLAGS)
    fc.ranges(FLAGS, {"noise": ">=0", "l2_clip": ">0", "learning_rate": "(0,1e6]", "delta": "(0,1)",
                      "target_epsilon": ">0", "eps": ">=0", "step_size": ">0", "adv_weight": "[0,1]",
                      "auto_gamma": ">0", "target_quantile": "(0,1)", "quantile_learning_rate": ">0",
                      "count_noise": ">0", "epochs": ">=1", "batch_size": ">=1", "steps": ">=1",
                      "eval_steps": ">=1", "eval_restarts": ">=1", "eval_examples": ">=0", "max_train": ">=0",
                      "max_test": ">=0", "public_examples": ">=0", "groups": ">=1", "seed": ">=0",
                      "verbose": ">=0", "checkpoint_every": ">=0"})
    require(FLAGS.attack in ATTACK_CHOICES,
            f"--attack={FLAGS.attack!r} is unknown; choose one of {', '.join(ATTACK_CHOICES)}")
    require(FLAGS.eps <= 1 or FLAGS.attack == "pgd_l2",
            f"--eps must be in [0, 1] for an l_inf attack on images in [0, 1], got {FLAGS.eps}")
    fc.choice(FLAGS, "model", fc.registered_names("tfdprobust.models", "MODELS"))
    fc.choice(FLAGS, "norm", fc.constant("tfdprobust.models", "NORMS"))
    fc.choice(FLAGS, "activation", ("relu", "tanh"))
    fc.choice(FLAGS, "optimizer", fc.registered_names("tfdprobust.optimizers", "OPTIMIZERS"))
    fc.choice(FLAGS, "dp_path", fc.constant("tfdprobust.train_step", "DP_PATHS"))
    fc.choice(FLAGS, "clipping", fc.registered_names("tfdprobust.clipping", "CLIPPINGS"))
    fc.choice(FLAGS, "sampling", fc.registered_names("tfdprobust.sampling", "SAMPLERS"))
    fc.choice(FLAGS, "accountant", fc.registered_names("tfdprobust.accounting", "ACCOUNTANTS"))
    fc.choice(FLAGS, "eval_preset", fc.registered_names("tfdprobust.ensemble", "PRESETS"))
    require(not (FLAGS.dp and FLAGS.dp_path == "tf_privacy" and FLAGS.sampling == "poisson"),
            "--dp_path=tf_privacy divides by the realised Poisson batch size, which leaks it; use "
            "--dp_path=vectorized (divides by the expected size) or --sampling=shuffle")
    # Flags the chosen mode ignores are refused: the run would silently differ from the command.
    nodp, no_attack, no_eval = not FLAGS.dp, FLAGS.attack == "none", FLAGS.eps == 0
    fc.refuse_ignored(FLAGS, [
        *[(name, nodp, "--nodp trains without clipping or noise")
          for name in ("noise", "l2_clip", "target_epsilon", "clipping", "clip_bias_cosine", "dp_path",
                       "dp_chunk_rows")],
        *[(name, nodp, "--nodp has no privacy guarantee to account") for name in ("delta", "accountant")],
        ("insecure_reproducible_noise", nodp, "--nodp adds no noise"),
        ("noise", FLAGS.target_epsilon is not None, "--target_epsilon calibrates the noise multiplier"),
        *[(name, no_attack, "--attack=none trains without adversarial examples")
          for name in ("adv_weight", "step_size", "steps", "random_start")],
        *[(name, no_eval, "--eps=0 reports no robust accuracy")
          for name in ("eval_preset", "eval_steps", "eval_restarts", "eval_examples")],
        *[(name, FLAGS.norm != "public_bn", f"--norm={FLAGS.norm} uses no public data")
          for name in ("public_from_private", "public_dataset", "public_examples")],
        ("auto_gamma", FLAGS.clipping != "automatic", "only --clipping=automatic uses it"),
        *[(name, FLAGS.clipping != "adaptive", "only --clipping=adaptive uses it")
          for name in ("target_quantile", "quantile_learning_rate", "count_noise")],
        ("groups", FLAGS.norm != "group", f"--norm={FLAGS.norm} has no groups"),
        ("checkpoint_dir", checkpoint_every() == 0, "no checkpoints are written (--checkpoint_every=0)"),
    ])
    # Flags that cannot work together.
    require(not (FLAGS.precompute_features and FLAGS.attack != "none"),
            f"--precompute_features conflicts with --attack={FLAGS.attack}: adversarial training needs gradients "
            "with respect to the pixels; add --noprecompute_features (or --attack=none)")
    precomputable = fc.constant("tfdprobust.models", "PRECOMPUTABLE_MODELS")
    require(not FLAGS.precompute_features or FLAGS.model in precomputable,
            f"--precompute_features needs a --model that starts with fixed features ({', '.join(precomputable)}), "
            f"got --model={FLAGS.model}; drop --precompute_features")
    require(not (FLAGS.strategy != "none" and FLAGS.checkpoint_every > 0 and FLAGS["checkpoint_every"].present),
            f"--checkpoint_every conflicts with --strategy={FLAGS.strategy}: it cannot checkpoint yet; "
            "use --checkpoint_every=0")
    require(not (FLAGS.resume and checkpoint_every() == 0),
            "--resume conflicts with --checkpoint_every=0: a resumed run must keep counting its steps; "
            "use --checkpoint_every >= 1")
    # names, the public/private split and --data_dir (NumPy only); then the flags that depend
    # on the data's size, from file headers (tfdprobust.datasize), before any decoding
    datasize.check_run_sizes(data_config(), FLAGS.batch_size, FLAGS.delta)
    if FLAGS.run_name is not None:
        require(FLAGS.run_name and os.sep not in FLAGS.run_name and not FLAGS.run_name.startswith("."),
                f"--run_name={FLAGS.run_name!r} must be a plain folder name (no '{os.sep}', not starting "
                "with '.'); put the folder in --export_dir")
        target = os.path.join(FLAGS.export_dir, FLAGS.run_name)
        fc.new_path(target, "--export_dir", also="--run_name")
        fc.new_path(target + ".json", "--export_dir", also="--run_name")
    else:  # the default name is unique; the folder only has to be writable
        fc.writable_dir(FLAGS.export_dir, "--export_dir")
    fc.writable_dir(FLAGS.tensorboard_dir, "--tensorboard_dir")
    check_checkpoint_flags()
    pretrain_flags.check_flags(FLAGS, FLAGS.dataset, FLAGS.attack)


def apply_recipe():
    """``--recipe``: sets the flags the command line did not give to the recipe's values
    (NumPy only; idempotent). An unknown name is one line listing the recipes.

    Returns:
        The ``(flag, value)`` pairs given explicitly over the recipe's values.
    """
    from tfdprobust import recipes

    return () if FLAGS.recipe is None else recipes.apply(recipes.get(FLAGS.recipe), FLAGS)


def checkpoint_every() -> int:
    """The effective ``--checkpoint_every``: its default (1) means off under a --strategy."""
    return FLAGS.checkpoint_every if FLAGS.strategy == "none" else 0


def check_checkpoint_flags():
    """``--resume`` names a run with a checkpoint; a fresh run does not start over one (NumPy only)."""
    from tfdprobust import checkpoint, flagcheck
    from tfdprobust.errors import require

    flagcheck.writable_dir(FLAGS.checkpoint_dir, "--checkpoint_dir")
    require(not FLAGS.resume or FLAGS.run_name is not None,
            "--resume needs --run_name=<the name of the interrupted run> (its log printed it)")
    if FLAGS.run_name is not None:
        parent = FLAGS.checkpoint_dir if FLAGS.checkpoint_dir is not None else FLAGS.export_dir
        checkpoint.check_request(checkpoint.folder_of(parent, FLAGS.run_name), FLAGS.resume, FLAGS.run_name)


def config_from_flags():
    """Builds a validated :class:`tfdprobust.run_config.RunConfig` from the flags."""
    check_flags()
    from tfdprobust import attacks, run_config
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    attack = None
    eval_attack = None
    if FLAGS.attack != "none":
        attack = attacks.AttackConfig(name=FLAGS.attack, eps=FLAGS.eps, step_size=FLAGS.step_size,
                                      steps=FLAGS.steps, random_start=FLAGS.random_start)
    eval_name = FLAGS.attack if FLAGS.attack != "none" else "pgd_linf"
    if FLAGS.eps > 0:
        eval_attack = attacks.AttackConfig(name=eval_name, eps=FLAGS.eps, steps=FLAGS.eval_steps,
                                           random_start=True, restarts=FLAGS.eval_restarts)
    learning_rate = FLAGS.learning_rate
    if learning_rate is None:
        learning_rate = DP_LEARNING_RATE if FLAGS.dp else NON_DP_LEARNING_RATE
    train = TrainConfig(
        optimizer=FLAGS.optimizer, learning_rate=learning_rate,
        dp=DPConfig(enabled=FLAGS.dp, l2_clip=FLAGS.l2_clip, noise_multiplier=FLAGS.noise, path=FLAGS.dp_path,
                    clipping=FLAGS.clipping, auto_gamma=FLAGS.auto_gamma, target_quantile=FLAGS.target_quantile,
                    quantile_learning_rate=FLAGS.quantile_learning_rate, count_noise=FLAGS.count_noise,
                    clip_bias_cosine=FLAGS.clip_bias_cosine, chunk_rows=FLAGS.dp_chunk_rows),
        attack=attack, adv_weight=FLAGS.adv_weight, jit_compile=FLAGS.jit_compile)
    return run_config.RunConfig.make(
        train=train, batch_size=FLAGS.batch_size,
        data=data_config(),
        model=ModelConfig(name=FLAGS.model, norm=FLAGS.norm, activation=FLAGS.activation, groups=FLAGS.groups,
                          weight_standardization=FLAGS.weight_standardization),
        epochs=FLAGS.epochs, sampling=FLAGS.sampling, delta=FLAGS.delta, accountant=FLAGS.accountant,
        insecure_reproducible_noise=FLAGS.insecure_reproducible_noise,
        target_epsilon=FLAGS.target_epsilon, eval_attack=eval_attack, eval_preset=FLAGS.eval_preset,
        eval_examples=FLAGS.eval_examples, export_dir=FLAGS.export_dir,
        run_name=FLAGS.run_name, seed=FLAGS.seed, verbose=FLAGS.verbose, tensorboard_dir=FLAGS.tensorboard_dir,
        strategy=FLAGS.strategy, checkpoint_every=checkpoint_every(), checkpoint_dir=FLAGS.checkpoint_dir,
        resume=FLAGS.resume, ledger_dir=FLAGS.ledger_dir, budget=FLAGS.budget,
        pretrain=pretrain_flags.config_from_flags(FLAGS, attack),
        precompute_features=FLAGS.precompute_features, recipe=FLAGS.recipe, recipe_overrides=apply_recipe())


def main(argv):
    """Validates the flags, trains, prints the summary. Bad input: one line, exit 2."""
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    check_flags()  # before TensorFlow is imported: a typo costs a second, not the import
    logging.set_verbosity(logging.ERROR)  # TF's SavedModel writer logs every asset at INFO
    from tfdprobust import runs

    result = runs.run(config_from_flags())
    print(runs.summary(result))
    return 0


if __name__ == "__main__":
    cli.run(main)
