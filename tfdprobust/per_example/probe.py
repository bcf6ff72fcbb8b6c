"""A numerical check that a network keeps examples apart: what the layer list cannot see.

:func:`~tfdprobust.per_example.registry.validate_network` checks the *layers* a network is
made of. A subclassed model's ``call`` (or a custom layer declared per-example by mistake)
can still combine rows, e.g. ``h + tf.reduce_mean(h, axis=0)``; the layer list does not show
it, yet one example then moves every other example's gradient (and its adversarial
example). :func:`check_examples_independent` runs the network itself on a small probe batch
and verifies, on what it actually executes:

* **values** (inference mode, as the train step and the attack call it): replacing or
  removing example ``j`` leaves every other row of the output unchanged (this also sees
  mixing whose gradient is zero, e.g. through ``tf.stop_gradient``, and dependence on the
  batch size, which add-or-remove-one adjacency changes);
* **Jacobian** (inference *and* training mode): the gradient of a random projection of
  output row ``i`` with respect to input row ``j != i`` is zero (this sees mixing too small
  for the value tolerance, and mixing in a custom gradient, which the attack and the
  per-example rules differentiate through).

The probe batch is random, drawn with a fixed seed: that randomness protects nothing (it is
not private data and decides nothing about it). The network's variables are restored
afterwards, so a layer that updates state in training mode keeps none of the probe.

Limits (a probe tests points, it does not prove): mixing that only happens for some inputs
(``tf.cond`` on a batch statistic, a branch on a batch size other than the probe's) or
whose values *and* gradients vanish at the probe inputs goes unseen; inputs are drawn in
[0, 1) (images), so a network that reads integer ids is probed on few distinct ids. The
probe complements the default-deny layer list; it does not replace it.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfdprobust.errors import UsageError

#: Examples in the probe batch: enough that "another row" is never a single special case.
PROBE_BATCH = 4
#: Relative tolerance of the value comparison (batched kernels may round differently when
#: the batch size changes); mixing through a mean of 4 rows moves rows by ~25%.
VALUE_RTOL = 1e-4
#: Relative size above which a cross-example Jacobian block counts as non-zero: zero, since
#: the blocks of a per-example network are exact zeros (a zero row of the output gradient
#: back-propagates to an exactly zero input row through every built-in model here).
JACOBIAN_RTOL = 0.0

FIX = ("write the network as a tf.keras.Sequential or functional model of per-example layers, "
       "with any normalization from public data (--norm=public_bn or --norm=group)")


def probe_input_shape(net: tf.keras.Model) -> Optional[Sequence[int]]:
    """The per-example input shape of ``net``, or ``None`` when it is not built."""
    shape = None
    try:
        shape = net.input_shape
    except (AttributeError, ValueError):
        shape = getattr(net, "_build_input_shape", None)
    if shape is None:
        return None
    if isinstance(shape, list):  # several inputs: the probe handles one
        return None
    shape = tf.TensorShape(shape).as_list()
    if len(shape) < 2 or any(d is None for d in shape[1:]):
        return None
    return shape[1:]


def _outputs(net, x, training: bool) -> tf.Tensor:
    out = net(x, training=training)
    if isinstance(out, (list, tuple, dict)):
        out = tf.concat([tf.reshape(o, [tf.shape(x)[0], -1]) for o in tf.nest.flatten(out)], axis=1)
    return tf.reshape(tf.cast(out, tf.float32), [tf.shape(x)[0], -1])


def _value_offender(net, x: np.ndarray, other: np.ndarray) -> Optional[str]:
    base = _outputs(net, x, False).numpy()
    scale = float(np.max(np.abs(base))) + 1e-12
    for j in range(len(x)):
        keep = [i for i in range(len(x)) if i != j]
        replaced = x.copy()
        replaced[j] = other[j]
        for what, batch, rows in (("replacing", replaced, keep), ("removing", x[keep], slice(None))):
            out = _outputs(net, batch, False).numpy()[rows]
            moved = float(np.max(np.abs(out - base[keep])))
            if moved > VALUE_RTOL * scale:
                return (f"{what} probe example {j} changed the other examples' outputs by {moved:.3g} "
                        f"(outputs up to {scale:.3g})")
    return None


def _jacobian_offender(net, x: np.ndarray, training: bool) -> Optional[str]:
    x = tf.constant(x)
    rng = np.random.default_rng(1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = _outputs(net, x, training)
        weights = tf.constant(rng.standard_normal(out.shape), tf.float32)
        projections = [tf.reduce_sum(out[i] * weights[i]) for i in range(len(x))]
    try:
        for i, p in enumerate(projections):
            g = tape.gradient(p, x)
            if g is None:
                continue  # the output does not depend on the input through gradients (e.g. ids)
            g = tf.reshape(g, [len(x), -1]).numpy()
            own = float(np.max(np.abs(g[i]))) + 1e-30
            others = float(np.max(np.abs(np.delete(g, i, axis=0))))
            if others > JACOBIAN_RTOL * max(own, 1e-6):
                mode = "training" if training else "inference"
                return (f"in {mode} mode, probe example {i}'s output has a gradient of size {others:.3g} "
                        f"with respect to other examples' inputs (own: {own:.3g})")
    finally:
        del tape
    return None


def check_examples_independent(net: tf.keras.Model) -> None:
    """Refuses ``net`` under DP unless no output row depends on another input row.

    Raises:
        UsageError: one line naming what moved and how to write the network instead; or
            the network is not built (its input shape is unknown).
    """
    shape = probe_input_shape(net)
    if shape is None:
        raise UsageError(
            f"the network {net.name} has no known single input shape, so DP training cannot verify that it "
            "keeps examples apart; build it first (net.build((None, *shape)) or call it on a batch), "
            f"or {FIX}")
    rng = np.random.default_rng(0)  # a fixed, public probe: this randomness protects nothing
    x = rng.random((PROBE_BATCH, *shape), dtype=np.float32)
    other = rng.random((PROBE_BATCH, *shape), dtype=np.float32)
    saved = [v.numpy() for v in net.variables]
    try:
        offender = (_value_offender(net, x, other) or _jacobian_offender(net, x, training=False)
                    or _jacobian_offender(net, x, training=True))
    finally:
        for v, value in zip(net.variables, saved):
            v.assign(value)
    if offender:
        raise UsageError(f"the network {net.name} mixes examples ({offender}), so one private example would "
                         f"move the others' gradients and DP training refuses it; {FIX}")
