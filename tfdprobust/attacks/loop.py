"""Batched accuracy loops: accuracy under attack, PGD iterations to fool."""

from typing import Optional

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from tfdprobust.attacks.config import AttackConfig, ModelFn, _np_norm, generate, project
from tfdprobust.errors import require

def iterations_to_fool(model_fn: ModelFn, x, y, eps: float, step_size: float,
                       max_steps: int = 100, norm: str = "linf") -> np.ndarray:
    """PGD iterations until each example is first misclassified (seeds/004 Fig. 4).

    Runs CleverHans' PGD inner step (``fast_gradient_method`` then projection onto the
    eps-ball, no random start so the count is deterministic) one iteration at a time.
    Returns an int array: 0 for examples misclassified already, ``-1`` for examples
    not fooled within ``max_steps``.
    """
    require(norm in ("linf", "l2"), f"norm must be 'linf' or 'l2', got {norm!r}")
    require(eps > 0 and step_size > 0, f"eps and step_size must be > 0, got {eps}, {step_size}")
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    count = np.where(np.argmax(model_fn(x).numpy(), 1) != y.numpy(), 0, -1)
    x_adv = x
    for step in range(1, max_steps + 1):
        if (count >= 0).all():
            break
        x_adv = fast_gradient_method(model_fn, x_adv, step_size, _np_norm(norm), clip_min=0.0,
                                     clip_max=1.0, y=y, sanity_checks=False)
        x_adv = project(x_adv, x, eps, norm)
        wrong = np.argmax(model_fn(x_adv).numpy(), 1) != y.numpy()
        count = np.where((count < 0) & wrong, step, count)
    return count


def correct_under_attack(model_fn: ModelFn, x, y, config: Optional[AttackConfig] = None,
                         batch_size: int = 500, compiled: bool = False, progress=None) -> np.ndarray:
    """Per-example bool: is ``x`` classified as ``y`` (and, with ``config``, its adversarial
    example too)?

    The one batched accuracy loop that training, tuning, evaluation and the sanity
    checks share. Under an attack a point counts as robust only if its clean prediction
    is also right, as in AutoAttack and RobustBench: an attack from a random start can land
    a misclassified point on its true class, which would put robust accuracy above clean.

    Args:
        config: the attack; ``None`` measures clean accuracy.
        compiled: run each batch inside ``tf.function`` (much faster for Keras models;
            only for graph-safe attacks, i.e. not cw_l2).
        progress: anything with ``add(n)`` (e.g. ``tf.keras.utils.Progbar``).

    Example:
        >>> fn = lambda z: tf.reshape(z, [-1, 2])           # logits = the two pixels
        >>> correct_under_attack(fn, np.array([[[[0.9]], [[0.1]]]], np.float32), np.array([0]))
        array([ True])
    """

    def batch_correct(xb, yb):
        yb = tf.cast(yb, tf.int64)
        correct = tf.equal(tf.argmax(model_fn(xb), 1, output_type=tf.int64), yb)
        if config is not None:
            adv = generate(model_fn, xb, yb, config)
            correct = correct & tf.equal(tf.argmax(model_fn(adv), 1, output_type=tf.int64), yb)
        return correct

    if compiled:
        batch_correct = tf.function(batch_correct)
    out = []
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start:start + batch_size], tf.float32)
        yb = tf.convert_to_tensor(np.asarray(y[start:start + batch_size]), tf.int64)
        out.append(batch_correct(xb, yb).numpy())
        if progress is not None:
            progress.add(len(out[-1]))
    return np.concatenate(out) if out else np.zeros([0], bool)
