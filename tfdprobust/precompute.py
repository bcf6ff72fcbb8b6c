"""Fixed features computed once, in advance: DP training of the head on precomputed features.

Tramèr and Boneh, "Differentially Private Learning Needs Better Features (or Much More
Data)", apply the scattering transform to every image once, before training, and train the
private model on the stored coefficients. A network of :data:`tfdprobust.models.MODELS`
whose leading layers are fixed feature layers (:data:`FIXED_FEATURE_LAYERS`, today
:class:`~tfdprobust.features.Scattering2D`) splits into

* the **feature extractor**: those leading layers. They have no weights and no state, do not
  depend on any data, and map each image to its features on its own. Applying them to the
  private images in advance therefore costs no privacy (it is a fixed per-example
  pre-processing: DP-SGD's guarantee on the head's training holds for the images, since any
  function of one example is a valid example-level input) and lets no example influence
  another;
* the **head**: the layers after them, which DP-SGD trains on the features with the usual
  per-example rules (the validator checks the head like any network).

The model that is evaluated and exported is the **full** network (extractor + head, the
head's weights copied into it), so it takes pixels, and the attacks and the robustness
evaluation still work in pixel space.

Adversarial training needs gradients with respect to the *pixels* at every step, so with an
attack the transform must stay inside the network; :class:`~tfdprobust.run_config.RunConfig`
refuses ``precompute_features`` together with a training attack.

Example:
    >>> from tfdprobust.models import ModelConfig
    >>> cfg = ModelConfig(name="scatternet_cnn", norm="group", groups=27)
    >>> supports(cfg)
    True
    >>> build_head(cfg).input_shape                                  # doctest: +SKIP
    (None, 7, 7, 81)
"""

import time
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfdprobust import data, models
from tfdprobust.errors import require
from tfdprobust.features import Scattering2D

FIXED_FEATURE_LAYERS: Tuple[type, ...] = (Scattering2D,)
"""Layer classes that are weightless, stateless, data-independent and per-example, so that
they may be applied to the data once before private training."""


def _layers(cfg: models.ModelConfig):
    """Fresh layers of ``cfg``'s network, split into (fixed features, head)."""
    built = models.MODELS.get(cfg.name)(cfg)
    require(isinstance(built, tuple), f"--precompute_features needs a layer-stack model; {cfg.name} is functional")
    count = 0
    while count < len(built) and isinstance(built[count], FIXED_FEATURE_LAYERS):
        count += 1
    return built[:count], built[count:]


def supports(cfg: models.ModelConfig) -> bool:
    """Whether ``cfg``'s network starts with fixed feature layers that can be precomputed."""
    built = models.MODELS.get(cfg.name)(cfg)
    return isinstance(built, tuple) and bool(built) and isinstance(built[0], FIXED_FEATURE_LAYERS)


def check(cfg: models.ModelConfig) -> None:
    """Raises a UsageError naming the flag if ``cfg`` has no fixed features to precompute."""
    require(supports(cfg), f"--precompute_features needs a --model that starts with fixed features "
            f"(scattering); {cfg.name} does not; drop --precompute_features")


def feature_extractor(cfg: models.ModelConfig) -> tf.keras.Model:
    """The fixed leading layers of ``cfg``'s network as a model on ``cfg.input_shape`` images."""
    check(cfg)
    features, _ = _layers(cfg)
    return tf.keras.Sequential([tf.keras.Input(cfg.input_shape), *features], name=f"{cfg.name}_features")


def feature_shape(cfg: models.ModelConfig) -> Tuple[int, ...]:
    """The shape of one example's features (from the layers' shape rules: no filter bank is built)."""
    check(cfg)
    features, _ = _layers(cfg)
    shape = tf.TensorShape([None, *cfg.input_shape])
    for layer in features:
        shape = layer.compute_output_shape(shape)
    return tuple(int(d) for d in shape[1:])


def build_head(cfg: models.ModelConfig, seed: int = 0) -> tf.keras.Model:
    """The trainable layers of ``cfg``'s network on the precomputed features, weights from ``seed``."""
    shape = feature_shape(cfg)
    tf.keras.utils.set_random_seed(seed)
    _, head = _layers(cfg)
    return tf.keras.Sequential([tf.keras.Input(shape), *head], name=f"{cfg.name}_head")


def full_model(cfg: models.ModelConfig, head: tf.keras.Model) -> tf.keras.Model:
    """``cfg``'s whole network (pixels -> logits) with ``head``'s weights copied into its head.

    The copy goes layer by layer and checks each variable's shape, so a head of another
    architecture is refused rather than silently misloaded. Non-trainable state (public
    batch-norm statistics) is copied too.
    """
    features, layers = _layers(cfg)
    net = tf.keras.Sequential([tf.keras.Input(cfg.input_shape), *features, *layers], name=cfg.name)
    require(len(head.layers) == len(layers), f"the head has {len(head.layers)} layers, {cfg.name}'s head "
            f"{len(layers)}")
    for source, target in zip(head.layers, layers):
        got, want = source.get_weights(), target.get_weights()
        require(len(got) == len(want) and all(a.shape == b.shape for a, b in zip(got, want)),
                f"head layer {source.name} does not match {target.name} of {cfg.name}")
        target.set_weights(got)
    return net


def _compiled(extractor: tf.keras.Model):
    """``extractor`` as one ``tf.function`` for every batch size (tracing the scattering graph
    takes seconds; a trace per batch shape would cost more than the transform of a split)."""
    apply = getattr(extractor, "_tfdprobust_apply", None)
    if apply is None:
        signature = [tf.TensorSpec([None, *extractor.input_shape[1:]], tf.float32)]
        apply = tf.function(lambda x: extractor(x, training=False), input_signature=signature)
        object.__setattr__(extractor, "_tfdprobust_apply", apply)
    return apply


def transform(extractor: tf.keras.Model, images: np.ndarray, what: str = "images", batch_size: int = 500,
              log: Optional[Callable[[str], None]] = print, every_seconds: float = 15.0) -> np.ndarray:
    """Applies ``extractor`` to ``images`` in batches, with a progress line about every
    ``every_seconds`` (``log=None``: silent). Each image's features depend on it alone."""
    n = len(images)
    out = np.empty((n, *extractor.output_shape[1:]), np.float32)
    apply = _compiled(extractor)
    start = last = time.time()
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        out[lo:hi] = apply(tf.constant(images[lo:hi], tf.float32)).numpy()
        now = time.time()
        if log is not None and (now - last >= every_seconds or hi == n):
            last = now
            log(f"precomputing features of {what}: {hi}/{n} ({100 * hi / n:.0f}%), {now - start:.0f} s")
    return out


def transform_data(extractor: tf.keras.Model, split: Optional[data.ImageData], what: str,
                   log: Optional[Callable[[str], None]] = print) -> Optional[data.ImageData]:
    """``split`` with its images replaced by their features (``None`` stays ``None``)."""
    if split is None:
        return None
    return data.ImageData(transform(extractor, split.x, what, log=log), split.y, split.name,
                          split.source + f" (as {extractor.name} features, precomputed)")
