"""DP-SGD data-parallel training on ``tf.distribute``: several devices or several machines.

The ``--strategy`` flag (:data:`STRATEGIES`) picks ``none`` (one device, the default),
``mirrored`` (``tf.distribute.MirroredStrategy``: every local GPU, or every logical CPU
device) or ``multi_worker`` (``tf.distribute.MultiWorkerMirroredStrategy``: one process per
machine, the cluster described by ``TF_CONFIG``). One DP-SGD step over R replicas is:

1. **Sampling.** The N private examples are split into R disjoint shards (example i goes to
   replica ``i mod R``). Each replica draws its own Bernoulli(q) mask over its shard, from a
   secret generator of its own (:mod:`tfdprobust.randomness`), with the *global* rate
   ``q = B / N``. Every example belongs to exactly one shard, so across the replicas each
   example joins the step independently with probability q, exactly once: the union of the
   replicas' batches is one Poisson sample of the whole dataset, which is the event the
   accountant composes (sampling rate B / N for the global expected batch B).
2. **Clipping.** Each replica clips its own examples' gradients to C and sums them.
3. **Noise.** Each replica adds independent Gaussian noise of std ``sigma C / sqrt(R)``
   from its process's secret generator, so the all-reduced sum carries noise of total std
   exactly sigma C (a sum of R independent normals). The replicas of one process share
   one generator, whose draws never overlap; each worker process seeds its own from its
   own OS entropy (never from ``--seed``, never from the chief).
4. **All-reduce.** The noisy sums are all-reduced (SUM), divided by the *global* expected
   batch size B, and applied with the optimizer's own aggregation switched off, so every
   replica applies the same update to its copy of the weights.

No replica ever sees another's examples or noise; only the noisy sums cross the network,
as in the central-noise DP-SGD of Abadi et al., "Deep Learning with Differential Privacy".
Adaptive clipping (its count release would need the same treatment) and the
tensorflow-privacy path are refused under a strategy, and so is ``--sampling=shuffle``
(its guarantee assumes one global permutation).

Example:
    >>> STRATEGIES.names()
    ('none', 'mirrored', 'multi_worker')
    >>> noise_share()          # outside any strategy: one replica adds all the noise
    1.0
"""

import contextlib
import functools
import json
import math
import os
from typing import Callable, List, Optional, Sequence

import tensorflow as tf

from tfdprobust import randomness
from tfdprobust.errors import UsageError, require
from tfdprobust.registry import Registry

#: ``--strategy`` name -> a function that makes the ``tf.distribute.Strategy`` (or ``None``).
STRATEGIES: Registry = Registry("strategy")


@STRATEGIES.register("none")
def _none() -> None:
    return None


@STRATEGIES.register("mirrored")
def _mirrored() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    # Without GPUs, mirror over the logical CPU devices (tf.config.set_logical_device_configuration).
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)


@STRATEGIES.register("multi_worker")
def _multi_worker() -> tf.distribute.Strategy:
    check_tf_config(os.environ.get("TF_CONFIG"))
    return tf.distribute.MultiWorkerMirroredStrategy()


def check_tf_config(text: Optional[str]) -> None:
    """Validates ``TF_CONFIG`` for ``--strategy=multi_worker`` (one line naming the fix).

    Example:
        >>> check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    """
    fix = ('set TF_CONFIG to e.g. {"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
           '"task": {"type": "worker", "index": 0}} (same cluster on every worker, its own index)')
    require(bool(text), f"--strategy=multi_worker needs the TF_CONFIG environment variable; {fix}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"TF_CONFIG is not valid JSON ({err.msg}); {fix}") from None
    workers = (config.get("cluster") or {}).get("worker") if isinstance(config, dict) else None
    task = config.get("task") or {} if isinstance(config, dict) else {}
    require(isinstance(workers, list) and len(workers) > 0, f"TF_CONFIG has no cluster.worker list; {fix}")
    require(task.get("type") in ("worker", "chief") and isinstance(task.get("index"), int),
            f"TF_CONFIG has no task of type worker (or chief) with an integer index; {fix}")
    require(task["type"] == "chief" or 0 <= task["index"] < len(workers),
            f"TF_CONFIG task.index={task['index']} is not in [0, {len(workers)}); {fix}")


@functools.lru_cache(maxsize=None)
def make_strategy(name: str) -> Optional[tf.distribute.Strategy]:
    """The strategy ``name`` (``None`` for ``none``), made once per process.

    ``MultiWorkerMirroredStrategy`` configures TensorFlow's collective ops, which must
    happen before the first op runs, so :func:`tfdprobust.runs.run` calls this first.
    """
    return STRATEGIES.get(name)()


def scope(strategy: Optional[tf.distribute.Strategy]):
    """``strategy.scope()``, or a no-op without a strategy (build models inside it)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def worker_index(strategy: Optional[tf.distribute.Strategy]) -> int:
    """This process's index among the cluster's workers, the chief (if any) first: 0
    without a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None or not resolver.task_type:
        return 0
    if resolver.task_type == "chief":
        return 0
    return len(resolver.cluster_spec().as_dict().get("chief", [])) + int(resolver.task_id or 0)


def num_workers(strategy: Optional[tf.distribute.Strategy]) -> int:
    """How many worker processes the strategy spans (1 without a strategy)."""
    if strategy is None:
        return 1
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, [])) for job in ("chief", "worker"))


def is_chief(strategy: Optional[tf.distribute.Strategy]) -> bool:
    """Whether this process evaluates, exports and writes results (worker 0)."""
    return worker_index(strategy) == 0


# --------------------------------------------------------------------------- inside the step
def _replica_context():
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def noise_share() -> float:
    """The fraction ``1 / sqrt(R)`` of sigma C that each of the R replicas adds (1 outside
    a strategy): R independent draws of that std sum to noise of std sigma C."""
    context = _replica_context()
    return 1.0 if context is None else 1.0 / math.sqrt(context.num_replicas_in_sync)


def sum_over_replicas(tensors: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """All-reduces ``tensors`` (SUM) across the replicas; the identity outside a strategy."""
    context = _replica_context()
    if context is None:
        return list(tensors)
    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors)))


def global_mean(values: tf.Tensor) -> tf.Tensor:
    """This replica's share of the mean of ``values`` over the *global* batch: the sum of
    the local values over the global count, so that the optimizer's usual cross-replica
    SUM of gradients yields the gradient of the global mean (non-private runs)."""
    context = _replica_context()
    if context is None:  # no NaN on an empty (Poisson) batch: its step is a zero gradient
        return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), values.dtype))
    count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.size(values), values.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def apply_summed(optimizer: tf.keras.optimizers.Optimizer, grads_and_vars) -> None:
    """Applies gradients that :func:`sum_over_replicas` already summed: the optimizer must
    not sum them again across the replicas (Keras' default)."""
    optimizer.apply_gradients(grads_and_vars, experimental_aggregate_gradients=False)


# --------------------------------------------------------------------------- generators and data
def noise_generator(strategy: Optional[tf.distribute.Strategy],
                    insecure_seed: Optional[int] = None) -> tf.random.Generator:
    """This process's secret noise generator, made *outside* the strategy's scope.

    Made inside the scope, a generator would be a mirrored variable whose initial state
    ``MultiWorkerMirroredStrategy`` broadcasts from the chief; made outside, every worker
    seeds its own from its own OS entropy, and the local replicas share it (its draws never
    overlap). With the insecure flag each worker gets its own replayable stream.
    """
    require(not tf.distribute.has_strategy(),
            "internal: make the noise generator outside the strategy's scope (see distribute.noise_generator)")
    base = randomness.noise_generator(insecure_seed)
    if insecure_seed is None:
        return base
    return base.split(num_workers(strategy))[worker_index(strategy)]


def poisson_dataset(strategy: tf.distribute.Strategy, sampler, x, y,
                    insecure_seed: Optional[int] = None) -> tf.distribute.DistributedDataset:
    """One Poisson sample of the whole dataset per step, split over the replicas.

    Global replica r (of R) owns the examples ``r, r + R, r + 2R, ...`` and draws its own
    Bernoulli(q) mask over them, with the global ``q = B / N`` of ``sampler`` (a
    :class:`~tfdprobust.sampling.PoissonSampler`), from a secret generator of its own.

    Args:
        strategy: the strategy whose replicas consume the batches.
        sampler: the run's Poisson sampler (N and B are global).
        x, y: all N private examples (every worker holds the same arrays).
        insecure_seed: ``None`` (secret); an integer replays the masks (voids DP).
    """
    require(hasattr(sampler, "shard_dataset"),
            f"--strategy needs --sampling=poisson (each replica samples its own shard), got {type(sampler).__name__}")
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local
        # Called outside the strategy's scope (distribute_datasets_from_function does not
        # enter it): plain local generators, one per local replica.
        if insecure_seed is None:
            generators = [randomness.noise_generator(None) for _ in range(local)]
        else:  # the same split on every worker; each takes its replicas' streams
            generators = randomness.noise_generator(insecure_seed + 1).split(replicas)[first:first + local]
        shards = [sampler.shard_dataset(x, y, generators[j], first + j, replicas) for j in range(local)]
        # Round robin, one element per local replica per step: the distributed iterator hands
        # consecutive elements to the local replicas in order, so each step gets every shard once.
        order = tf.data.Dataset.range(local).repeat()
        return tf.data.Dataset.choose_from_datasets(shards, order).prefetch(2)

    return strategy.distribute_datasets_from_function(dataset_fn)


def in_replica_fn(strategy: Optional[tf.distribute.Strategy], fn: Callable, *args):
    """Runs ``fn(*args)`` on every replica (``strategy.run``) or directly without a strategy."""
    return fn(*args) if strategy is None else strategy.run(fn, args=args)
