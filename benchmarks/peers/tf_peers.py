"""TensorFlow entries: Keras fit, our train step without and with DP, and tensorflow-privacy."""

from typing import Dict, Optional

from benchmarks import peers
from benchmarks.peers import common


def _tf():
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow was already initialized in this process (a test that measures in-process
        # after other tests): the thread pools are fixed. The benchmark runner always measures
        # in a fresh one-thread process, where this never happens.
        pass
    return tf


def _net(model: str):
    from tfdprobust import models

    # The same architecture in every framework: no normalization (group norm for ResNet-20,
    # which needs one; public-data BN has no counterpart in the peers).
    return models.build_model(models.ModelConfig(name=model, norm="group" if model == "resnet20" else "none"))


def _attack():
    from tfdprobust import attacks

    return attacks.AttackConfig(name="pgd_linf", eps=peers.PGD_EPS, steps=peers.PGD_STEPS,
                                step_size=peers.PGD_STEP_SIZE, random_start=True)


def _fit_step(model, x, y):
    """One ``train_function`` call per step on a repeated constant batch (synchronised)."""
    tf = _tf()
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    function = model.make_train_function()

    def step():
        logs = function(iterator)
        float(logs["loss"])  # wait for the step

    return step


def our_model(model: str, batch_size: int, pgd: bool, dp: bool, path: str = "vectorized",
              chunk_rows: Optional[int] = None):
    """Our compiled train step on ``model`` with the benchmark's DP-SGD and PGD settings.

    ``chunk_rows`` is ``DPConfig.chunk_rows`` (``--dp_chunk_rows``): the exact clipped sum
    over chunks of whole examples, which bounds the DP step's extra memory.
    """
    from tfdprobust import train_step

    cfg = train_step.TrainConfig(
        learning_rate=peers.LEARNING_RATE, expected_batch_size=batch_size,
        attack=_attack() if pgd else None, adv_weight=0.5,
        dp=train_step.DPConfig(enabled=dp, path=path, l2_clip=peers.L2_CLIP, noise_multiplier=peers.NOISE,
                                chunk_rows=chunk_rows))
    out = train_step.PrivateRobustModel(_net(model), cfg)
    out.compile()
    return out


def _ours(spec: peers.Spec, dp: bool, path: str = "vectorized", chunk_rows: Optional[int] = None,
          note: str = "") -> Dict:
    tf = _tf()
    from tfdprobust import models, train_step

    x, y = common.batch(spec.batch_size)
    model = our_model(spec.model, spec.batch_size, spec.pgd, dp, path, chunk_rows)
    net = model.net
    if not dp:
        label = "tfdprobust train step, DP off"
    elif path == "tf_privacy":
        label = "tensorflow-privacy DPKerasSGDOptimizer in our train step (one microbatch per example)"
    else:
        rules = "per-layer rules" if train_step.per_example.supports(net) else "vectorized_map fallback"
        label = f"tfdprobust fast DP path ({rules})"
        if model.chunk_rows:
            label += f", chunks of {model.chunk_rows} rows" + ("" if chunk_rows else " (the default at this size)")
        elif chunk_rows == 0:
            label += ", one pass (--dp_chunk_rows=0)"
    label += note
    return common.timed(_fit_step(model, tf.constant(x), tf.constant(y)), spec, models.count_parameters(net),
                        path=label)


def keras_fit(spec: peers.Spec) -> Dict:
    tf = _tf()
    from tfdprobust import models

    x, y = common.batch(spec.batch_size)
    net = _net(spec.model)
    net.compile(tf.keras.optimizers.legacy.SGD(peers.LEARNING_RATE),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return common.timed(_fit_step(net, tf.constant(x), tf.constant(y)), spec, models.count_parameters(net),
                        path="Keras compile/fit")


def ours_nondp(spec: peers.Spec) -> Dict:
    return _ours(spec, dp=False)


def ours_dp(spec: peers.Spec) -> Dict:
    return _ours(spec, dp=True)


def ours_dp_chunked(spec: peers.Spec) -> Dict:
    # The memory-bounded variant of ours_dp: same clipped sum, over chunks of whole examples.
    return _ours(spec, dp=True, chunk_rows=peers.CHUNK_ROWS)


def ours_dp_chunk64(spec: peers.Spec) -> Dict:
    # Chunks of 64 rows: the per-example gradients of a network with many parameters per
    # example (ResNet-20) held for a quarter of the B = 250 batch at a time.
    return _ours(spec, dp=True, chunk_rows=64)


def ours_dp_onepass(spec: peers.Spec) -> Dict:
    # The clipped sum in one pass at every batch size (--dp_chunk_rows=0), against the default's chunks.
    return _ours(spec, dp=True, chunk_rows=0)


def ours_dp_offsets(spec: peers.Spec) -> Dict:
    """``ours_dp`` with the convolution layout the filter-gradient op replaced (one batched
    matmul per kernel offset), to measure that change in the same run. This process runs
    only this configuration, so patching the class here changes nothing elsewhere."""
    from tfdprobust.per_example.factors import ConvFactors

    rule = ConvFactors.layout
    ConvFactors.layout = lambda self: "offsets" if rule(self) == "filter_op" else rule(self)
    return _ours(spec, dp=True, note=", convolutions: one matmul per kernel offset instead of the filter-gradient op")


def tfp_dpkeras(spec: peers.Spec) -> Dict:
    # Our train step with tensorflow-privacy's DPKerasSGDOptimizer doing the clipping and
    # noise: it receives the vector of per-example (clean + adversarial) losses.
    return _ours(spec, dp=True, path="tf_privacy")


def tfp_dpsequential(spec: peers.Spec) -> Dict:
    tf = _tf()
    import tensorflow_privacy
    from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry

    from tfdprobust import attacks, models

    if spec.model == "resnet20":
        raise NotImplementedError("DPSequential needs a Sequential network; ResNet-20 is functional")
    x, y = tf.constant(common.batch(spec.batch_size)[0]), tf.constant(common.batch(spec.batch_size)[1])
    layers = [tf.keras.Input((28, 28, 1)), *_net(spec.model).layers]
    model = tensorflow_privacy.DPSequential(
        l2_norm_clip=peers.L2_CLIP, noise_multiplier=peers.NOISE, use_xla=False,
        layer_registry=layer_registry.make_default_layer_registry(), layers=layers)
    model.compile(tf.keras.optimizers.legacy.SGD(peers.LEARNING_RATE),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fast = bool(getattr(model, "_enable_fast_peg_computation", False))
    path = ("DPSequential fast gradient clipping" if fast else
            "DPSequential, microbatch vectorized_map fallback (a layer is not in the fast-clipping registry)")
    if not spec.pgd:
        step = _fit_step(model, x, y)
    else:
        attack = _attack()

        @tf.function
        def train(xb, yb):
            x_adv = attacks.generate(lambda z: model(z, training=False), xb, yb, attack)
            # Adversarial and clean rows as 2B examples: DPSequential clips each row.
            return model.train_step((tf.concat([x_adv, xb], 0), tf.concat([yb, yb], 0)))

        def step():
            logs = train(x, y)
            float(next(iter(logs.values())))

    return common.timed(step, spec, models.count_parameters(model), path=path)
