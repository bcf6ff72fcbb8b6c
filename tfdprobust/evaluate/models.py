"""Loading the models to evaluate: SavedModels, Keras files; shape, output and input-range checks."""

import dataclasses
import json
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from tfdprobust.errors import UsageError, require

# Per-dataset channel means / standard deviations of the usual "standardized" input.
STANDARDIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def input_transform(input_range: str, dataset: str):
    """Maps images in [0, 1] to the model's own input scale.

    ``unit``: unchanged; ``byte``: times 255; ``standardized``: ``(x - mean) / std``
    with the dataset's usual statistics (:data:`STANDARDIZATION`). Attacks always
    work in [0, 1] pixel space, so eps keeps its meaning.
    """
    import tensorflow as tf

    if input_range == "unit":
        return lambda z: z
    if input_range == "byte":
        return lambda z: z * 255.0
    mean, std = STANDARDIZATION[dataset]
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
    return lambda z: (z - mean_t[: z.shape[-1]]) / std_t[: z.shape[-1]]


@dataclasses.dataclass
class LoadedModel:
    """A model ready to attack: ``model_fn`` maps images in [0, 1] to logits."""

    name: str
    path: str
    model_fn: Callable
    metadata: Dict
    kind: str
    input_shape: Tuple[Optional[int], ...] = ()
    handle: object = None  # keeps a loaded SavedModel (and its variables) alive


def read_metadata(path: str) -> Dict:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    meta = os.path.join(folder, "metadata.json")
    if not os.path.exists(meta):
        return {}
    try:
        with open(meta) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{meta} is not valid JSON ({e}); fix or remove it") from None


def check_model_path(path: str) -> None:
    """The checks of a ``--model`` path that need no TensorFlow (the CLI runs them first).

    Raises:
        UsageError: naming the path and what to pass instead.
    """
    if not os.path.exists(path):
        raise UsageError(f"--model {path}: no such file or directory; pass a SavedModel directory "
                         f"or a .keras/.h5 file")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise UsageError(f"--model {path}: directory has no saved_model.pb; pass a SavedModel "
                         f"directory (tf.saved_model.save / model.save) or a .keras/.h5 file")
    if not os.path.isdir(path) and not path.endswith((".keras", ".h5")):
        raise UsageError(f"--model {path}: unsupported file; pass a SavedModel directory or a .keras/.h5 file")
    if not os.path.isdir(path):
        require(os.path.getsize(path) > 0, f"--model {path} is empty; pass a saved .keras/.h5 model file")


def load_model(path: str, name: Optional[str] = None, input_range: str = "unit",
               dataset: str = "mnist") -> LoadedModel:
    """Loads a SavedModel directory or a Keras model file into a :class:`LoadedModel`.

    Keras models (``.keras``, ``.h5`` or a Keras SavedModel) are called with
    ``training=False``; other SavedModels through their ``serving_default`` signature.
    """
    import tensorflow as tf

    from tfdprobust import attacks

    name = name or os.path.basename(os.path.normpath(path))
    to_model = input_transform(input_range, dataset)
    check_model_path(path)
    is_dir = os.path.isdir(path)
    metadata = read_metadata(path)
    keras_dir = is_dir and os.path.exists(os.path.join(path, "keras_metadata.pb"))
    model = None
    if not is_dir or keras_dir:
        try:
            model = tf.keras.models.load_model(path, compile=False)
        except Exception as e:  # noqa: BLE001 - any loader failure is a bad --model
            if not is_dir:
                raise UsageError(f"--model {path}: cannot load as a Keras model ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}); the file is corrupt or not "
                                 "a Keras model: pass a file written by model.save()") from None
            # A Keras SavedModel with custom layers Keras cannot rebuild: its serving
            # signature still works, so fall through to tf.saved_model.load.
    if model is not None:
        # Saved before it was built (no Input layer, never called): Keras loads it without
        # a single weight, and its first call would draw fresh random ones.
        require(model.built or any(layer.weights for layer in model.layers),
                f"--model {path} was saved before it was built, so it holds no weights; start the model with "
                "tf.keras.Input(shape) (or call it on a batch) before model.save()")
        shape = _keras_input_shape(model)

        @tf.function(reduce_retracing=True)
        @attacks.connected
        def model_fn(x):
            return model(to_model(x), training=False)

        return LoadedModel(name, path, model_fn, metadata, "keras", shape, handle=model)
    try:
        obj = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--model {path}: cannot load SavedModel ({type(e).__name__}); it is corrupt or "
                         "incomplete: pass a folder written by tf.saved_model.save or model.save") from None
    sig = getattr(obj, "signatures", {}).get("serving_default")
    if sig is None:
        raise UsageError(f"--model {path}: SavedModel has no 'serving_default' signature; export "
                         f"one that maps images in [0, 1] to logits")
    args, kwargs = sig.structured_input_signature
    require(len(kwargs) == 1 and not args,
            f"--model {path}: serving signature must take exactly one image input, got {list(kwargs)}")
    (in_name, spec), = kwargs.items()
    outputs = sig.structured_outputs
    require(len(outputs) == 1,
            f"--model {path}: serving signature must return one logits tensor, got {list(outputs)}")
    (out_name,) = outputs

    @tf.function(reduce_retracing=True)
    @attacks.connected
    def model_fn(x):
        return sig(**{in_name: tf.cast(to_model(x), spec.dtype)})[out_name]

    return LoadedModel(name, path, model_fn, metadata, "saved_model", tuple(spec.shape[1:]), handle=obj)


def _keras_input_shape(model) -> Tuple[Optional[int], ...]:
    """The input shape (without the batch) of a Keras model; ``()`` when it is unknown: a
    model saved without an Input layer (e.g. ``Sequential([loaded_net, Softmax()])``) is
    not built, has no ``input_shape``, and is built by its first call on the data."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):  # Keras: "'Sequential' object has no attribute '_nested_inputs'"
        return ()
    return tuple(shape[1:]) if not isinstance(shape, list) else ()


def check_model_on_data(model: LoadedModel, x: np.ndarray, num_classes: int) -> None:
    """One-line errors for an input-shape or output mismatch."""
    import tensorflow as tf

    want = model.input_shape
    if want and len(want) == len(x.shape[1:]) and any(
            w is not None and w != h for w, h in zip(want, x.shape[1:])):
        raise UsageError(f"--model {model.path} expects inputs of shape {list(want)} but the data "
                         f"has {list(x.shape[1:])}; evaluate it on a matching --dataset")
    try:
        out = model.model_fn(tf.constant(x[:2], tf.float32))
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--model {model.path} rejects inputs of shape {list(x.shape[1:])} "
                         f"({type(e).__name__}); evaluate it on a matching --dataset") from None
    require(len(out.shape) == 2 and out.shape[1] >= num_classes,
            f"--model {model.path} returns shape {list(out.shape)}; expected [batch, {num_classes}] logits")



def check_input_range(path: str, input_range: str, dataset: str, x: np.ndarray, y: np.ndarray,
                      batch_size: int = 500) -> Dict[str, float]:
    """Clean accuracy of the model under each input scale; an error if the assumed one is wrong.

    A foreign model trained on [0, 255] or standardized inputs still "works" on [0, 1]
    images, at near-chance accuracy, and every robustness number would then be
    meaningless. When another scale beats ``input_range`` by more than 20 points, this
    raises a :class:`UsageError` that names the ``--input_range`` to pass.

    Returns:
        ``{input_range: accuracy}`` for every scale tried.
    """
    from tfdprobust.evaluate.config import INPUT_RANGES

    accs = {}
    for r in INPUT_RANGES:
        m = load_model(path, None, r, dataset)
        pred = np.concatenate([np.argmax(m.model_fn(x[i:i + batch_size]).numpy(), 1)
                               for i in range(0, len(x), batch_size)])
        accs[r] = float(np.mean(pred == y))
    best = max(accs, key=accs.get)
    if accs[best] > accs[input_range] + 0.2:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in accs.items())
        raise UsageError(f"--model {path}: clean accuracy is {accs[input_range]:.2f} with --input_range="
                         f"{input_range} but {accs[best]:.2f} with {best} ({shown}); the model expects "
                         f"{'[0, 255]' if best == 'byte' else 'standardized' if best == 'standardized' else '[0, 1]'} "
                         f"inputs: pass --input_range={best}")
    return accs
