"""Measurements under ``MirroredStrategy`` on two logical CPU devices, for test_distribute.py.

Logical devices must be configured before TensorFlow starts, which a pytest process has
usually done already, so the tests run this module in a fresh process
(``python tests/distribute_util.py``); it prints one JSON object. Every check compares
the two-replica computation with an independent single-device one, or with the sampling
and noise distributions that DP-SGD's accounting assumes.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPLICAS = 2


def configure_devices(count: int = REPLICAS) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def _trainer(strategy, train_cfg, public, norm="public_bn"):
    from tfdprobust import distribute, models, train_step

    noise = distribute.noise_generator(strategy) if strategy is not None else None
    with distribute.scope(strategy):
        net = models.build_model(models.ModelConfig(norm=norm), seed=0)
        trainer = train_step.PrivateRobustModel(net, train_cfg, public, noise_generator=noise)
        trainer.compile()
    return trainer


def _private_gradient(trainer, x, y):
    trainer.refresh_public_statistics()
    noisy, _, _ = trainer.private_step(x, trainer.adversarial(x, y), y)
    return noisy


def _per_replica(strategy, parts):
    return strategy.experimental_distribute_values_from_function(lambda ctx: parts[ctx.replica_id_in_sync_group])


def clipped_sums(strategy, pgd_steps: int = 0) -> dict:
    """One DP step (sigma = 0) on 12 examples: one device vs two replicas holding 5 and 7,
    then one whole train step on the replicas against plain SGD on the one-device sum."""
    from tfdprobust import attacks, distribute, train_step

    rng = np.random.default_rng(0)
    x = rng.random((12, 28, 28, 1), dtype=np.float32)
    y = (np.arange(12) % 10).astype(np.int64)
    public = rng.random((16, 28, 28, 1), dtype=np.float32)
    # No random start: each example's PGD path depends on that example only.
    attack = attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=pgd_steps, random_start=False) if pgd_steps else None
    cfg = train_step.TrainConfig(learning_rate=0.5, expected_batch_size=12, attack=attack,
                                 dp=train_step.DPConfig(noise_multiplier=0.0, l2_clip=0.05))
    one = _trainer(None, cfg, public)
    two = _trainer(strategy, cfg, public)
    reference = [g.numpy() for g in tf.function(_private_gradient)(one, tf.constant(x), tf.constant(y))]
    split = (slice(0, 5), slice(5, 12))
    xs = _per_replica(strategy, [tf.constant(x[s]) for s in split])
    ys = _per_replica(strategy, [tf.constant(y[s]) for s in split])
    before = [v.numpy() for v in one.net.trainable_variables]

    def step(a, b):  # what train_step does with the gradient (fit() runs it whole in `fit`)
        grads = _private_gradient(two, a, b)
        distribute.apply_summed(two.optimizer, zip(grads, two.net.trainable_variables))
        return grads

    replicated = tf.function(lambda a, b: strategy.run(step, args=(a, b)))(xs, ys)
    per_replica = [[g.numpy() for g in strategy.experimental_local_results(r)] for r in replicated]
    # The replicas' SGD step must equal plain SGD on the one-device clipped mean (no double sum).
    weights_one = [w - cfg.learning_rate * g for w, g in zip(before, reference)]
    weights_two = [strategy.experimental_local_results(v) for v in two.net.trainable_variables]
    return {
        "reference_norm": float(np.sqrt(sum(float((g ** 2).sum()) for g in reference))),
        "max_diff_to_one_device": max(float(np.abs(r[i] - reference[k]).max())
                                      for k, r in enumerate(per_replica) for i in range(REPLICAS)),
        "weights_max_diff": max(float(np.abs(w[i].numpy() - ref).max())
                                for w, ref in zip(weights_two, weights_one) for i in range(REPLICAS)),
        "weights_moved": max(float(np.abs(w - w0).max()) for w, w0 in zip(weights_one, before)),
    }


def noise(strategy, sigma: float = 3.0, clip: float = 0.5, steps: int = 4) -> dict:
    """DP steps on empty batches: the update is pure noise of std sigma C (B = 1)."""
    from tfdprobust import train_step

    cfg = train_step.TrainConfig(expected_batch_size=1, attack=None,
                                 dp=train_step.DPConfig(noise_multiplier=sigma, l2_clip=clip))
    two = _trainer(strategy, cfg, None, norm="none")
    empty_x = _per_replica(strategy, [tf.zeros([0, 28, 28, 1])] * REPLICAS)
    empty_y = _per_replica(strategy, [tf.zeros([0], tf.int64)] * REPLICAS)
    step = tf.function(lambda a, b: strategy.run(_private_gradient, args=(two, a, b)))
    draws, replicas_agree = [], True
    for _ in range(steps):
        out = step(empty_x, empty_y)
        per_replica = [np.concatenate([strategy.experimental_local_results(g)[i].numpy().ravel() for g in out])
                       for i in range(REPLICAS)]
        replicas_agree &= bool(np.array_equal(per_replica[0], per_replica[1]))
        draws.append(per_replica[0])
    draws = np.stack(draws)
    return {"expected_std": sigma * clip, "std": float(draws.std()), "mean": float(draws.mean()),
            "samples": int(draws.size), "replicas_agree": replicas_agree,
            "step_correlation": float(np.corrcoef(draws[0], draws[1])[0, 1])}


def sampling(strategy, n: int = 400, batch: int = 100, steps: int = 200) -> dict:
    """Which examples each replica's batches hold, over ``steps`` steps."""
    from tfdprobust import distribute
    from tfdprobust.sampling import PoissonSampler

    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n, dtype=np.int64)
    iterator = iter(distribute.poisson_dataset(strategy, PoissonSampler(n, batch), x, y))
    included = np.zeros(n, np.int64)
    sizes, duplicates, wrong_shard, same_pattern = [], 0, 0, 0
    for _ in range(steps):
        _, labels = next(iterator)
        local = [t.numpy() for t in strategy.experimental_local_results(labels)]
        union = np.concatenate(local)
        duplicates += len(union) - len(np.unique(union))
        wrong_shard += sum(int((part % REPLICAS != r).sum()) for r, part in enumerate(local))
        same_pattern += int(np.array_equal(np.sort(local[0]) // REPLICAS, np.sort(local[1]) // REPLICAS))
        np.add.at(included, union, 1)
        sizes.append([len(part) for part in local])
    sizes = np.array(sizes)
    return {"n": n, "q": batch / n, "steps": steps, "inclusions": int(included.sum()),
            "duplicates": duplicates, "wrong_shard": wrong_shard, "identical_masks": same_pattern,
            "size_correlation": float(np.corrcoef(sizes[:, 0], sizes[:, 1])[0, 1]),
            "max_per_example": int(included.max()), "min_per_example": int(included.min())}


def fit(strategy) -> dict:
    """A short DP run through :func:`tfdprobust.training.train` on the mirrored strategy."""
    from tfdprobust import accounting, data, run_config, training
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    rng = np.random.default_rng(1)
    private = data.ImageData(rng.random((200, 28, 28, 1), dtype=np.float32), (np.arange(200) % 10).astype(np.int64),
                             "synthetic", "random")
    public = data.ImageData(rng.random((16, 28, 28, 1), dtype=np.float32), np.zeros(16, np.int64), "synthetic", "random")
    cfg = run_config.RunConfig.make(
        train=TrainConfig(learning_rate=0.5, attack=None, dp=DPConfig(noise_multiplier=1.0)), batch_size=50,
        model=ModelConfig(norm="public_bn"), epochs=1, export_dir=None, verbose=0, strategy="mirrored")
    spec = run_config.accounting_spec(cfg, len(private))
    trained = training.train(cfg, private, public, spec, log=lambda _: None)
    return {"steps": trained.steps, "epsilon": trained.history.history["epsilon"][-1],
            "epsilon_global_batch": accounting.epsilon(spec.replace(steps=trained.steps)),
            "replicas": trained.trainer.distribute_strategy.num_replicas_in_sync,
            "finite": all(bool(np.isfinite(v.numpy()).all()) for v in trained.trainer.net.trainable_variables)}


#: What ``python tests/distribute_util.py <section>...`` can run.
SECTIONS = {"clipped_sums": clipped_sums, "clipped_sums_pgd": lambda s: clipped_sums(s, pgd_steps=2),
            "noise": noise, "sampling": sampling, "fit": fit}


def main(sections) -> None:
    configure_devices()
    from tfdprobust import distribute

    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == REPLICAS, strategy.num_replicas_in_sync
    out = {}
    for name in sections:
        start = time.process_time()
        out[name] = SECTIONS[name](strategy)
        out[name]["cpu_seconds"] = time.process_time() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:] or list(SECTIONS))
