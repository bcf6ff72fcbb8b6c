"""CleverHans 4 (TF2) attacks behind the registry: fgsm, bim, pgd_linf, pgd_l2, mim, cw_l2."""

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.carlini_wagner_l2 import carlini_wagner_l2
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tfdprobust.attacks.config import _np_norm, _register, project

@_register("fgsm", "linf", randomized=False)
def _fgsm(model_fn, x, y, cfg):
    return fast_gradient_method(
        model_fn, x, cfg.eps, np.inf, clip_min=0.0, clip_max=1.0, y=y, sanity_checks=False
    )


@_register("bim", "linf", randomized=False)
def _bim(model_fn, x, y, cfg):
    return projected_gradient_descent(
        model_fn, x, cfg.eps, cfg.iterative_step, cfg.steps, np.inf,
        clip_min=0.0, clip_max=1.0, y=y, rand_init=False, sanity_checks=False,
    )


def _pgd(model_fn, x, y, cfg):
    return projected_gradient_descent(
        model_fn, x, cfg.eps, cfg.iterative_step, cfg.steps, _np_norm(cfg.norm),
        clip_min=0.0, clip_max=1.0, y=y, rand_init=cfg.random_start, sanity_checks=False,
    )


_register("pgd_linf", "linf", randomized=True)(_pgd)
_register("pgd_l2", "l2", randomized=True)(_pgd)


@_register("mim", "linf", randomized=False)
def _mim(model_fn, x, y, cfg):
    return momentum_iterative_method(
        model_fn, x, cfg.eps, cfg.iterative_step, cfg.steps, np.inf,
        clip_min=0.0, clip_max=1.0, y=y, decay_factor=cfg.mim_decay, sanity_checks=False,
    )


@_register("cw_l2", "l2", randomized=False, graph_safe=False)
def _cw_l2(model_fn, x, y, cfg):
    # CleverHans CW becomes *targeted* when given y, so it runs untargeted on the
    # model's predictions; points already misclassified are returned unchanged.
    x_np = np.asarray(x, dtype=np.float32)
    adv = carlini_wagner_l2(
        model_fn,
        x_np,
        batch_size=max(1, len(x_np)),
        clip_min=0.0,
        clip_max=1.0,
        binary_search_steps=cfg.cw_binary_search_steps,
        max_iterations=cfg.steps,
        confidence=cfg.cw_confidence,
        initial_const=cfg.cw_initial_const,
        learning_rate=cfg.step_size or 0.05,
    )
    adv = project(tf.constant(adv, tf.float32), tf.constant(x_np), cfg.eps, "l2")
    wrong = tf.not_equal(tf.argmax(model_fn(x_np), 1, output_type=tf.int32), tf.cast(y, tf.int32))
    return tf.where(tf.reshape(wrong, [-1] + [1] * (len(x_np.shape) - 1)), x_np, adv)

