"""The independent reference the per-example tests compare against: one GradientTape per
example (its clean and adversarial copies' weighted losses summed)."""

from typing import List

import numpy as np
import tensorflow as tf


def per_example_reference(net, x, y, w, copies: int) -> List[np.ndarray]:
    """Each example's whole gradient, one tape per example: for every trainable variable,
    ``[n, *shape]`` with ``n = len(x) // copies`` (copy ``k`` of example ``i`` is row ``i + k n``)."""
    n = len(x) // copies
    out = []
    for i in range(n):
        rows = [i + k * n for k in range(copies)]
        with tf.GradientTape() as tape:
            logits = net(tf.gather(x, rows), training=False)
            loss = tf.reduce_sum(tf.gather(w, rows) * tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.gather(y, rows), logits=logits))
        out.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, net.trainable_variables)])
    return [np.stack([g[k] for g in out]) for k in range(len(net.trainable_variables))]
