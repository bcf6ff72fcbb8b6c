"""Adversarial attacks behind one validated config and a registry.

Every attack maps images in [0, 1] (NHWC float32) and integer labels to adversarial
images that stay in [0, 1] and inside the eps-ball around the input.

* ``fgsm``, ``bim``, ``pgd_linf``, ``pgd_l2``, ``mim``: CleverHans 4 (TF2).
* ``cw_l2``: CleverHans Carlini-Wagner L2 (eager only; its result is projected onto
  the l2 eps-ball, so it is a bounded attack like the others).
* ``apgd_linf``, ``apgd_l2``: APGD-CE (Croce & Hein 2020, "Reliable evaluation of
  adversarial robustness with an ensemble of diverse parameter-free attacks"),
  implemented here in TensorFlow with ``tf.while_loop`` so that it runs batched, in
  eager mode and inside ``tf.function``. See :func:`apgd`.
* ``fab_t_linf``, ``fab_t_l2``: FAB-T, the targeted Fast Adaptive Boundary attack
  (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
  boundary attack"), 9 target classes; graph-safe. See :mod:`.fab`.

``fgsm``, ``bim``, ``pgd_linf``, ``pgd_l2``, ``mim``, ``apgd_*`` and ``fab_t_*``
use only TensorFlow ops: they work inside a compiled ``tf.function`` (e.g. an
adversarial training step). They never update model state; they only call
``model_fn``.

Default step sizes (``AttackConfig.step_size=None``):

* ``fgsm``: one step of size ``eps``.
* ``bim``, ``pgd_linf``, ``pgd_l2``, ``mim``: ``min(eps, 2.5 * eps / steps)``
  (Madry et al. 2018), so ``steps`` iterations can cross the ball and back.
* ``apgd_*``: the initial step is ``2 * eps``; APGD halves it per example on its
  own checkpoint schedule.
* ``fab_t_*``: no step size; FAB projects onto the linearized boundary (overshoot 1.05).
* ``cw_l2``: ``step_size`` is the Adam learning rate, default ``0.05`` (CleverHans uses
  5e-3 with 1,000 iterations; the larger rate suits the shorter runs used here).

Example:
    >>> cfg = AttackConfig(name="pgd_linf", eps=0.1, steps=10)
    >>> x_adv = generate(lambda x: model(x, training=False), x, y, cfg)  # doctest: +SKIP
"""

from tfdprobust.attacks.config import (  # noqa: F401  (the public API)
    ATTACKS, AttackConfig, AttackSpec, ModelFn, connected, generate, project)
from tfdprobust.attacks import cleverhans_adapters  # noqa: F401  (registers the CleverHans attacks)
from tfdprobust.attacks.apgd import apgd, apgd_checkpoints, dlr_loss, targeted_dlr_loss  # noqa: F401
from tfdprobust.attacks.fab import fab_t, project_to_hyperplane  # noqa: F401
from tfdprobust.attacks.gradient_free import margin_loss, spsa_linf  # noqa: F401
from tfdprobust.attacks.loop import correct_under_attack, iterations_to_fool  # noqa: F401
