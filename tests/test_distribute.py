"""DP-SGD on tf.distribute: two logical CPU replicas (MirroredStrategy) and two worker
processes on 127.0.0.1 (MultiWorkerMirroredStrategy).

Logical devices can only be configured before TensorFlow starts, so the mirrored checks
run in one fresh process (tests/distribute_util.py) whose JSON several tests share.
"""

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfdprobust import accounting, distribute, sampling
from tfdprobust.errors import UsageError
from tfdprobust.train_step import DPConfig, TrainConfig
from tfdprobust.run_config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
       "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _probe(*sections):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distribute_util.py"), *sections],
                          capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mirrored():
    return _probe("clipped_sums", "noise", "sampling")


@pytest.mark.integration
def test_two_replicas_give_the_one_device_clipped_sum(mirrored):
    out = mirrored["clipped_sums"]
    # 5 + 7 examples on two replicas vs all 12 on one device, sigma = 0: the all-reduced
    # clipped sum (over B) is the same on every replica and equals the one-device one.
    assert out["reference_norm"] > 1e-3
    assert out["max_diff_to_one_device"] < 1e-6 * max(out["reference_norm"], 1.0)
    # The SGD step applies it once: the optimizer does not sum the replicas' copies again.
    assert out["weights_moved"] > 1e-4
    assert out["weights_max_diff"] < 1e-6


@pytest.mark.integration
def test_total_noise_std_is_sigma_c_over_two_replicas(mirrored):
    out = mirrored["noise"]
    n, expected = out["samples"], out["expected_std"]
    # Sample std of n normals: relative standard error 1/sqrt(2n); allow 5 of them. One replica
    # adding all the noise twice (std x sqrt(2)) or only one share (std / sqrt(2)) is far outside.
    assert abs(out["std"] / expected - 1) < 5 / math.sqrt(2 * n)
    assert abs(out["mean"]) < 5 * expected / math.sqrt(n)
    assert out["replicas_agree"]  # every replica applies the same noisy sum
    assert abs(out["step_correlation"]) < 5 / math.sqrt(n / 4)  # fresh noise every step


@pytest.mark.integration
def test_replicas_poisson_sample_disjoint_shards_with_the_global_rate(mirrored):
    out = mirrored["sampling"]
    draws = out["n"] * out["steps"]
    q = out["q"]
    assert out["duplicates"] == 0 and out["wrong_shard"] == 0  # each example at most once per step
    assert abs(out["inclusions"] / draws - q) < 5 * math.sqrt(q * (1 - q) / draws)
    # Independent secret masks per replica: never the same pattern, uncorrelated batch sizes.
    assert out["identical_masks"] == 0
    assert abs(out["size_correlation"]) < 5 / math.sqrt(out["steps"])


def test_shards_partition_the_data_and_keep_the_global_rate():
    import tensorflow as tf

    n, batch, shards, steps = 90, 30, 3, 60
    sampler = sampling.PoissonSampler(n, batch)
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n, dtype=np.int64)
    counts = np.zeros(n, np.int64)
    for index in range(shards):
        generator = tf.random.Generator.from_seed(index + 1)
        for _, labels in sampler.shard_dataset(x, y, generator, index, shards).take(steps):
            labels = labels.numpy()
            assert np.all(labels % shards == index) and len(np.unique(labels)) == len(labels)
            np.add.at(counts, labels, 1)
    q, draws = batch / n, n * steps
    assert abs(counts.sum() / draws - q) < 5 * math.sqrt(q * (1 - q) / draws)
    assert counts.min() > 0  # every example of every shard can be drawn


def test_noise_share_and_sums_are_identities_without_a_strategy():
    import tensorflow as tf

    assert distribute.noise_share() == 1.0
    values = [tf.constant([1.0, 2.0])]
    assert distribute.sum_over_replicas(values)[0].numpy().tolist() == [1.0, 2.0]
    assert float(distribute.global_mean(tf.constant([1.0, 2.0, 6.0]))) == 3.0
    assert distribute.make_strategy("none") is None and distribute.num_workers(None) == 1


@pytest.mark.parametrize("kwargs,needle", [
    (dict(strategy="tpu"), "--strategy must be one of none, mirrored, multi_worker"),
    (dict(strategy="mirrored", sampling="shuffle"), "--sampling=poisson"),
    (dict(strategy="mirrored", train=TrainConfig(dp=DPConfig(clipping="adaptive"))), "--clipping=adaptive"),
])
def test_unsupported_combinations_name_the_flag(kwargs, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        RunConfig.make(**kwargs)


@pytest.mark.tfprivacy
def test_tf_privacy_path_is_refused_under_a_strategy():
    with pytest.raises(UsageError, match="--dp_path=vectorized"):
        RunConfig.make(train=TrainConfig(dp=DPConfig(path="tf_privacy")), sampling="shuffle", strategy="mirrored")


@pytest.mark.parametrize("text,needle", [
    (None, "needs the TF_CONFIG"), ("{not json", "not valid JSON"), ('{"cluster": {}}', "no cluster.worker"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "no task of type worker"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task.index=3"),
])
def test_bad_tf_config_is_one_line_naming_the_fix(text, needle):
    with pytest.raises(UsageError, match=needle) as err:
        distribute.check_tf_config(text)
    assert "\n" not in str(err.value) and "TF_CONFIG" in str(err.value)


@pytest.mark.parametrize("cluster,task,index", [
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, 1),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "chief", "index": 0}, 0),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "worker", "index": 0}, 1),
])
def test_worker_index_counts_the_chief_first(monkeypatch, cluster, task, index):
    import types

    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    strategy = types.SimpleNamespace(cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
    assert distribute.worker_index(strategy) == index
    assert distribute.is_chief(strategy) == (index == 0)  # exactly one process evaluates and exports
    assert distribute.num_workers(strategy) == sum(len(v) for v in cluster.values())


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_mirrored_fit_and_pgd_step_match_one_device():
    out = _probe("clipped_sums_pgd", "fit")
    assert out["clipped_sums_pgd"]["max_diff_to_one_device"] < 1e-6
    assert out["clipped_sums_pgd"]["weights_max_diff"] < 1e-6
    fit = out["fit"]
    assert fit["replicas"] == 2 and fit["steps"] == 4 and fit["finite"]
    assert fit["epsilon"] == fit["epsilon_global_batch"]


@pytest.mark.slow
def test_two_workers_train_and_report_one_epsilon_for_the_global_batch(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    argv = ["--strategy=multi_worker", "--max_train=200", "--max_test=100", "--batch_size=50", "--epochs=1",
            "--attack=none", "--eps=0", "--noise=1", "--learning_rate=0.5", "--verbose=0",
            f"--export_dir={tmp_path / 'out'}", "--run_name=two_workers"]
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "tfdprobust.experiments.mnist", *argv], env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    result = json.loads((tmp_path / "out" / "two_workers.json").read_text())
    n = result["num_train_examples"]  # about 200: --max_train keeps each example by its own hash
    assert result["workers"] == 2 and result["replicas"] == 2 and result["steps"] == -(-n // 50)
    # q = global expected batch / N: 50 / N, whatever each replica's share was.
    spec = accounting.AccountingSpec(num_examples=n, batch_size=50, epochs=1, noise_multiplier=1.0,
                                     delta=1e-5, steps=result["steps"])
    assert result["epsilon"] == pytest.approx(accounting.epsilon(spec), rel=1e-9)
    # Both workers print the same epsilon; only the chief exported.
    printed = [[line for line in out.splitlines() if line.startswith("epsilon")] for out, _ in outputs]
    assert len(printed[0]) == 1 and printed[0] == printed[1]
    assert "worker 1 of 2" in outputs[1][0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["two_workers", "two_workers.json"]
