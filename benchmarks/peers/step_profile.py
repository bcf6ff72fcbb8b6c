"""The pieces of one training step timed side by side in one process (no flags: the CLI is
:mod:`benchmarks.profile_step`, which documents the pieces)."""


def profile(model: str, batch_size: int, pgd: bool, rounds: int, log=print):
    """Times the pieces of one step (listed in :mod:`benchmarks.profile_step`).

    Returns:
        ``{piece: [CPU ms of each round]}`` in the order the pieces ran.
    """
    import statistics
    import time

    from tfdprobust.errors import require
    from benchmarks.peers import common, tf_peers

    require(batch_size >= 1, f"--batch_size must be >= 1, got {batch_size}")
    require(rounds >= 1, f"--rounds must be >= 1, got {rounds}")
    tf = tf_peers._tf()  # one thread
    x, y = (tf.constant(t) for t in common.batch(batch_size))
    plain, private = (tf_peers.our_model(model, batch_size, pgd, dp) for dp in (False, True))
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
