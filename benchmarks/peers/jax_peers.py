"""JAX entries: DP-SGD with ``vmap(grad)`` per-example gradients, and the non-private step.

The networks are written with ``jax.lax`` (NHWC, like Keras) so that no extra library is
needed; parameter shapes and counts equal the Keras ones. The whole step (PGD included)
is one ``jax.jit``-compiled function.
"""

import os
from typing import Dict

from benchmarks import peers
from benchmarks.peers import common

# One XLA CPU thread (set before jax is imported).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def _conv_init(key, shape):
    import jax

    fan_in = shape[0] * shape[1] * shape[2]
    return jax.random.normal(key, shape) * (2.0 / fan_in) ** 0.5


def _layers(model: str):
    """(kind, shape or settings) of each layer, as in tfdprobust.models."""
    if model == "cnn":
        return [("conv", (8, 8, 1, 16), 2, ((3, 3), (3, 3))), ("relu",), ("pool", 2, 1),
                ("conv", (4, 4, 16, 32), 2, "VALID"), ("relu",), ("pool", 2, 1), ("flatten",),
                ("dense", (512, 32)), ("relu",), ("dense", (32, 10))]
    if model == "lenet":
        return [("conv", (5, 5, 1, 20), 1, "VALID"), ("relu",), ("pool", 2, 2),
                ("conv", (5, 5, 20, 50), 1, "VALID"), ("relu",), ("pool", 2, 2), ("flatten",),
                ("dense", (800, 500)), ("relu",), ("dense", (500, 10))]
    raise ValueError(f"no layer list for {model!r}")


# ResNet-20 (tfdprobust.models.resnet20 with --norm=group): (in, out, stride) of the 9 blocks.
_BLOCKS = [(16, 16, 1)] * 3 + [(16, 32, 2)] + [(32, 32, 1)] * 2 + [(32, 64, 2)] + [(64, 64, 1)] * 2


def _resnet_init(key):
    import jax
    import jax.numpy as jnp

    def conv(k, shape):
        return {"w": _conv_init(k, shape)}

    def norm(c):
        return {"gamma": jnp.ones(c), "beta": jnp.zeros(c)}

    keys = iter(jax.random.split(key, 2 * len(_BLOCKS) + 2))
    params = {"stem": conv(next(keys), (3, 3, 1, 16)), "stem_norm": norm(16), "blocks": []}
    for cin, cout, _ in _BLOCKS:
        params["blocks"].append({"a": conv(next(keys), (3, 3, cin, cout)), "a_norm": norm(cout),
                                 "b": conv(next(keys), (3, 3, cout, cout)), "b_norm": norm(cout)})
    params["dense"] = {"w": jax.random.normal(next(keys), (64, 10)) * (2.0 / 64) ** 0.5, "b": jnp.zeros(10)}
    return params


def _resnet_forward(params, x):
    import jax
    import jax.numpy as jnp
    from jax import lax

    def conv(p, h, stride):  # "SAME" as Keras', no bias (a normalization follows)
        return lax.conv_general_dilated(h, p["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def group_norm(p, h, groups=4, eps=1e-3):  # per example: statistics over (H, W, C / groups)
        n, height, width, c = h.shape
        g = h.reshape(n, height, width, groups, c // groups)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = g.var(axis=(1, 2, 4), keepdims=True)
        return ((g - mean) / jnp.sqrt(var + eps)).reshape(h.shape) * p["gamma"] + p["beta"]

    h = jax.nn.relu(group_norm(params["stem_norm"], conv(params["stem"], x, 1)))
    for p, (cin, cout, stride) in zip(params["blocks"], _BLOCKS):
        y = jax.nn.relu(group_norm(p["a_norm"], conv(p["a"], h, stride)))
        y = group_norm(p["b_norm"], conv(p["b"], y, 1))
        shortcut = h
        if stride != 1 or cin != cout:  # option A: subsample, zero-pad the new channels
            extra = cout - cin
            shortcut = jnp.pad(h[:, ::stride, ::stride, :], ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        h = jax.nn.relu(y + shortcut)
    return h.mean(axis=(1, 2)) @ params["dense"]["w"] + params["dense"]["b"]


def _init(model: str, key):
    import jax
    import jax.numpy as jnp

    if model == "resnet20":
        return _resnet_init(key)
    params = []
    for layer in _layers(model):
        if layer[0] in ("conv", "dense"):
            key, sub = jax.random.split(key)
            shape = layer[1]
            w = _conv_init(sub, shape) if layer[0] == "conv" else jax.random.normal(sub, shape) * (2.0 / shape[0]) ** 0.5
            params.append((w, jnp.zeros(shape[-1])))
    return params


def _forward(model: str):
    import jax
    import jax.numpy as jnp
    from jax import lax

    if model == "resnet20":
        return _resnet_forward
    layers = _layers(model)

    def forward(params, x):
        it = iter(params)
        for layer in layers:
            kind = layer[0]
            if kind == "conv":
                w, b = next(it)
                x = lax.conv_general_dilated(x, w, (layer[2], layer[2]), layer[3],
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
            elif kind == "dense":
                w, b = next(it)
                x = x @ w + b
            elif kind == "relu":
                x = jax.nn.relu(x)
            elif kind == "pool":
                size, stride = layer[1], layer[2]
                x = lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), "VALID")
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)
        return x

    return forward


def _setup(spec):
    import jax
    import jax.numpy as jnp

    x, y = common.batch(spec.batch_size)
    params = _init(spec.model, jax.random.PRNGKey(0))
    count = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
    return jnp.asarray(x), jnp.asarray(y), params, count, _forward(spec.model)


def _cross_entropy(logits, y):
    import jax

    return -jax.numpy.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def _pgd(forward, params, x, y, key):
    import jax
    import jax.numpy as jnp

    def body(_, x_adv):
        grad = jax.grad(lambda z: _cross_entropy(forward(params, z), y).sum())(x_adv)
        x_adv = jnp.clip(x_adv + peers.PGD_STEP_SIZE * jnp.sign(grad), x - peers.PGD_EPS, x + peers.PGD_EPS)
        return jnp.clip(x_adv, 0.0, 1.0)

    start = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-peers.PGD_EPS, maxval=peers.PGD_EPS), 0, 1)
    return jax.lax.fori_loop(0, peers.PGD_STEPS, body, start)


def _run(spec, step_fn, params, x, y, count, path):
    import jax

    state = {"params": params, "key": jax.random.PRNGKey(1)}

    def step():
        state["key"], sub = jax.random.split(state["key"])
        state["params"] = step_fn(state["params"], x, y, sub)
        jax.block_until_ready(state["params"])

    return common.timed(step, spec, count, path=path)


def jax_nondp(spec: peers.Spec) -> Dict:
    import jax

    x, y, params, count, forward = _setup(spec)

    @jax.jit
    def train(params, xb, yb, key):
        def loss(p):
            if spec.pgd:
                x_adv = _pgd(forward, p, xb, yb, key)
                return 0.5 * (_cross_entropy(forward(p, x_adv), yb) + _cross_entropy(forward(p, xb), yb)).mean()
            return _cross_entropy(forward(p, xb), yb).mean()

        grads = jax.grad(loss)(params)
        return jax.tree_util.tree_map(lambda w, g: w - peers.LEARNING_RATE * g, params, grads)

    return _run(spec, train, params, x, y, count, path=f"JAX {jax.__version__} jit")


def jax_dp(spec: peers.Spec) -> Dict:
    import jax
    import jax.numpy as jnp

    x, y, params, count, forward = _setup(spec)

    def example_loss(p, xi, xai, yi):
        # One loss per example: clean and adversarial rows combined before clipping.
        clean = _cross_entropy(forward(p, xi[None]), yi[None])[0]
        if not spec.pgd:
            return clean
        return 0.5 * (clean + _cross_entropy(forward(p, xai[None]), yi[None])[0])

    @jax.jit
    def train(params, xb, yb, key):
        attack_key, noise_key = jax.random.split(key)
        x_adv = jax.lax.stop_gradient(_pgd(forward, params, xb, yb, attack_key)) if spec.pgd else xb
        grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0, 0))(params, xb, x_adv, yb)
        leaves, tree = jax.tree_util.tree_flatten(grads)
        norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))
        scale = jnp.minimum(1.0, peers.L2_CLIP / jnp.maximum(norms, 1e-12))
        keys = jax.random.split(noise_key, len(leaves))
        noisy = [(jnp.tensordot(scale, g, axes=1) + peers.NOISE * peers.L2_CLIP * jax.random.normal(k, g.shape[1:]))
                 / spec.batch_size for g, k in zip(leaves, keys)]
        new = jax.tree_util.tree_unflatten(tree, noisy)
        return jax.tree_util.tree_map(lambda w, g: w - peers.LEARNING_RATE * g, params, new)

    return _run(spec, train, params, x, y, count, path=f"JAX {jax.__version__} jit(vmap(grad))")
