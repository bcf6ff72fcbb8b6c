"""Crash-safe training: checkpoints round-trip, hold no generator state, and a killed run
resumes with an epsilon that composes every step that ran (tfdprobust.checkpoint, .journal)."""

import dataclasses
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from tfdprobust import accounting, checkpoint, data, journal, run_config, training
from tfdprobust.errors import UsageError
from mnist_cli_util import run_main  # noqa: F401  (fixture)
from tfdprobust.train_step import DPConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def _cfg(model, **kwargs):
    train = TrainConfig(attack=None, optimizer=kwargs.pop("optimizer", "momentum"), learning_rate=0.5,
                        dp=DPConfig(l2_clip=1.0, noise_multiplier=2.0, clipping=kwargs.pop("clipping", "flat")))
    return run_config.RunConfig.make(train=train, batch_size=8, model=model, export_dir=None, verbose=0, **kwargs)


@pytest.fixture
def tiny_private(tiny_images):
    x, y, _ = tiny_images
    return data.ImageData(x, y, "toy", "32 random images")


def _trained(cfg, private, checkpointing=None):
    spec = run_config.accounting_spec(cfg, len(private))
    if checkpointing is not None:
        spec = spec.replace(interrupted_steps=checkpointing.journal.interrupted)
    return training.train(cfg, private, None, spec, log=lambda message: None, checkpointing=checkpointing)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


# ----------------------------------------------------------------------------- state round trip
def test_a_checkpoint_restores_weights_optimizer_slots_clip_bound_and_step_count(tmp_path, tiny_private,
                                                                                 tiny_dense_model):
    cfg = _cfg(tiny_dense_model, clipping="adaptive")  # adaptive: the step moves the clip bound
    trainer = _trained(cfg, tiny_private).trainer
    optimizer = checkpoint._optimizer_variables(trainer)
    assert len(optimizer) > 1 and any(np.abs(v.numpy()).sum() > 0 for v in optimizer[1:])  # momentum slots moved
    assert float(trainer.clip_bound.numpy()) != 1.0 and int(trainer.optimizer.iterations.numpy()) == 4
    path = checkpoint.write(str(tmp_path / "run.checkpoint"), checkpoint.capture(trainer, {"run_name": "run"}))

    fresh = training.build_trainer(dataclasses.replace(cfg, seed=7), None, input_shape=tiny_private.x.shape[1:])
    assert not np.array_equal(fresh.net.weights[-2].numpy(), trainer.net.weights[-2].numpy())
    state = checkpoint.read(path)
    checkpoint.restore(fresh, state)
    for saved, restored in ((trainer.net.weights, fresh.net.weights),
                            (optimizer, checkpoint._optimizer_variables(fresh))):
        assert len(saved) == len(restored)  # (names differ: Keras numbers a second model's layers)
        for a, b in zip(_values(saved), _values(restored)):
            np.testing.assert_array_equal(a, b)
    assert float(fresh.clip_bound.numpy()) == float(trainer.clip_bound.numpy())
    assert int(fresh.optimizer.iterations.numpy()) == state.steps == 4


def test_a_checkpoint_holds_no_generator_state(tmp_path, tiny_private, tiny_dense_model):
    trainer = _trained(_cfg(tiny_dense_model), tiny_private).trainer
    folder = str(tmp_path / "run.checkpoint")
    path = checkpoint.write(folder, checkpoint.capture(trainer, {"run_name": "run"}))
    with np.load(os.path.join(path, checkpoint.STATE)) as arrays:
        keys = set(arrays.files)
    optimizer = checkpoint._optimizer_variables(trainer)
    expected = ({f"net/{i:04d}" for i in range(len(trainer.net.weights))}
                | {f"optimizer/{i:04d}" for i in range(len(optimizer))} | {"clip_bound"})
    assert keys == expected  # weights, optimizer variables, clip bound: nothing else
    manifest = json.loads(open(os.path.join(path, checkpoint.MANIFEST)).read())
    names = [n for n, _ in manifest["net_variables"] + manifest["optimizer_variables"]]
    assert not [n for n in names if "generator" in n.lower() or "rng" in n.lower() or "state_var" in n]
    # The secret Philox states (the noise generator's; its 192 bits are fresh OS entropy)
    # appear in no file of the folder.
    secret = trainer.noise_generator.state.numpy().tobytes()
    assert len(secret) == 24
    for name in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(name):
            blob = open(name, "rb").read()
            assert secret not in blob and secret[8:16] not in blob, name


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch, tiny_private, tiny_dense_model):
    trainer = _trained(_cfg(tiny_dense_model), tiny_private).trainer
    folder = str(tmp_path / "run.checkpoint")
    state = checkpoint.capture(trainer, {"run_name": "run"})
    first = checkpoint.write(folder, state)
    later = dataclasses.replace(state, manifest=dict(state.manifest, steps=8))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_file", crash)
    with pytest.raises(OSError):
        checkpoint.write(folder, later)
    assert checkpoint.latest(folder) == first and os.listdir(folder) == [os.path.basename(first)]


def test_a_resumed_run_trains_only_the_remaining_epochs(tmp_path, tiny_private, tiny_dense_model):
    """Fresh run of 2 epochs with checkpoints, then a resume from its first checkpoint (as after
    a kill in epoch 2 with 3 steps lost): the optimizer ends at the planned step count and the
    journal carries the 3 lost steps into the accounting spec."""
    cfg = _cfg(tiny_dense_model, epochs=2, checkpoint_every=1, checkpoint_dir=str(tmp_path), run_name="run")
    plan = checkpoint.plan_for(cfg, "run")
    n = len(tiny_private)
    started = checkpoint.start(plan, cfg, cfg, n, "run", log=lambda message: None)
    trained = _trained(cfg, tiny_private, started)
    assert trained.steps == 8 and checkpoint.latest(plan.folder).endswith("step-000000008")
    # Pretend the run died 3 steps into epoch 2: the checkpoint at 4 steps, the journal at 7.
    first = checkpoint.capture(trained.trainer, {"run_name": "run", "epochs_done": 1, "epsilon_per_epoch": [1.0]})
    first = dataclasses.replace(first, manifest=dict(first.manifest, steps=4),
                                optimizer=(np.array(4, np.int64),) + first.optimizer[1:])  # [0]: the step counter
    for name in os.listdir(plan.folder):
        if name.startswith("step-"):
            checkpoint.remove(os.path.join(plan.folder, name))
    checkpoint.write(plan.folder, first)
    lost = journal.Journal(plan.folder, started=7, reserved=7 + journal.RESERVE)
    lost._write(durable=True)

    resumed_cfg = dataclasses.replace(cfg, resume=True)
    resumed = checkpoint.start(checkpoint.plan_for(resumed_cfg, "run"), resumed_cfg, cfg, n, "run",
                               log=lambda message: None)
    assert resumed.state.steps == 4 and resumed.journal.interrupted == (3,)
    again = _trained(resumed_cfg, tiny_private, resumed)
    assert again.steps == 8 and again.resumed_from == 4
    assert int(again.trainer.optimizer.iterations.numpy()) == 8
    assert json.load(open(os.path.join(plan.folder, journal.JOURNAL)))["started"] == 8


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path, tiny_dense_model):
    cfg = _cfg(tiny_dense_model, epochs=2, checkpoint_every=1, checkpoint_dir=str(tmp_path), run_name="run")
    resume = dataclasses.replace(cfg, resume=True)
    with pytest.raises(UsageError, match="--resume: there is no checkpoint of run 'run'"):
        checkpoint.plan_for(resume, "run")
    checkpoint.start(checkpoint.plan_for(cfg, "run"), cfg, cfg, 32, "run", log=lambda message: None)
    with pytest.raises(UsageError, match="holds the checkpoint of an interrupted run 'run'.*--resume"):
        checkpoint.plan_for(cfg, "run")  # a fresh run may not start over it
    with pytest.raises(UsageError, match=r"flags differ .*epochs: 2 -> 3"):
        checkpoint.plan_for(dataclasses.replace(resume, epochs=3), "run")
    plan = checkpoint.plan_for(dataclasses.replace(resume, verbose=1, checkpoint_every=2), "run")  # allowed changes
    with pytest.raises(UsageError, match="trained on 32 examples"):
        checkpoint.start(plan, resume, resume, 31, "run", log=lambda message: None)


# ----------------------------------------------------------------------------- the step journal
def test_the_journal_counts_steps_started_after_the_checkpoint(tmp_path):
    folder = str(tmp_path / "run.checkpoint")
    record = journal.Journal.begin(folder)
    for _ in range(5):
        record.step_started()
    resumed = journal.Journal.recover(folder, checkpoint_steps=2)
    assert resumed.interrupted == (3,) and resumed.started == 2 and not resumed.recovered_from_reboot
    for _ in range(4):
        resumed.step_started()
    # a second interruption adds its own entry (shuffled epochs compose per attempt)
    assert journal.Journal.recover(folder, checkpoint_steps=4).interrupted == (3, 2)
    assert journal.Journal.recover(folder, checkpoint_steps=4).interrupted == (3, 2)  # idempotent


def test_after_a_reboot_the_journal_composes_its_flushed_bound(tmp_path, monkeypatch):
    """The per-step count is not flushed to disk; after a machine restart only the flushed
    bound ``reserved`` is trusted: it may over-count, never under-count."""
    folder = str(tmp_path / "run.checkpoint")
    record = journal.Journal.begin(folder)
    for _ in range(3):
        record.step_started()
    assert record.reserved == 1 + journal.RESERVE
    monkeypatch.setattr(journal, "boot_id", lambda: "another-boot")
    resumed = journal.Journal.recover(folder, checkpoint_steps=0)
    assert resumed.interrupted == (1 + journal.RESERVE,) and resumed.recovered_from_reboot


def test_a_missing_journal_refuses_to_resume(tmp_path):
    os.makedirs(tmp_path / "run.checkpoint")
    with pytest.raises(UsageError, match="journal .* missing or unreadable"):
        journal.Journal.recover(str(tmp_path / "run.checkpoint"), checkpoint_steps=0)


# ----------------------------------------------------------------------------- accounting
def _rdp_epsilon(event, delta):
    return rdp_privacy_accountant.RdpAccountant().compose(event).get_epsilon(delta)


def test_lost_steps_are_composed_like_steps_that_ran():
    spec = accounting.AccountingSpec(200, 20, 8, 1.0, 1e-5, "poisson", steps=80, interrupted_steps=(3, 5))
    reference = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 88)
    assert accounting.epsilon(spec) == pytest.approx(_rdp_epsilon(reference, 1e-5), rel=1e-9)
    assert accounting.epsilon(spec) > accounting.epsilon(spec.replace(interrupted_steps=()))
    assert "including 8 steps lost in 2 interrupted attempt(s)" in accounting.guarantee_statement(spec)
    # Shuffled batches: each interrupted attempt's partial epoch is a Gaussian mechanism of its own.
    shuffle = spec.replace(sampling="shuffle")
    epochs = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.5), 8 + 2)
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    assert accounting.epsilon(shuffle) == pytest.approx(
        rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation).compose(epochs).get_epsilon(1e-5))


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("argv,needle", [
    (["--checkpoint_every=-1"], "--checkpoint_every"),
    (["--resume"], "--resume needs --run_name"),
    (["--resume", "--run_name=gone"], "--resume: there is no checkpoint of run 'gone'"),
    (["--checkpoint_every=0", "--checkpoint_dir={tmp}/ck"], "--checkpoint_dir has no effect"),
    (["--checkpoint_every=0", "--resume", "--run_name=r"], "--resume conflicts"),
    (["--checkpoint_every=2", "--strategy=mirrored"], "--checkpoint_every conflicts"),
    (["--checkpoint_dir={tmp}/file"], "--checkpoint_dir"),
    (["--run_name=interrupted"], "holds the checkpoint of an interrupted run"),
])
def test_bad_checkpoint_flags_are_one_line_before_any_work(run_main, tmp_path, argv, needle):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "out" / "interrupted.checkpoint").mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = run_main(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


# ----------------------------------------------------------------------------- a killed run
@pytest.mark.integration
def test_a_killed_run_resumes_and_epsilon_composes_every_step_that_ran(tmp_path):
    """SIGKILL after the first checkpoint (and a few steps past it), then --resume: epsilon is
    dp_accounting's for all steps that ran, the lost ones included; the export is complete."""
    data_dir = SHARED_DATA if os.path.isdir(os.path.join(SHARED_DATA, "mnist")) else None
    argv = [sys.executable, "-m", "tfdprobust.experiments.mnist", "--max_train=200", "--max_test=50",
            "--batch_size=20", "--epochs=6", "--attack=none", "--eps=0", "--noise=1", "--learning_rate=0.5",
            "--norm=group", "--verbose=0", f"--export_dir={tmp_path}/out", "--run_name=r", "--checkpoint_every=1",
            *([f"--data_dir={data_dir}"] if data_dir else [])]
    folder = tmp_path / "out" / "r.checkpoint"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=ENV)
    deadline, started, saved = time.time() + 420, 0, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            steps = sorted(glob.glob(str(folder / "step-*")))
            try:
                started = json.loads((folder / journal.JOURNAL).read_text())["started"]
            except (OSError, ValueError, KeyError):
                started = 0
            saved = int(steps[-1].rsplit("-", 1)[1]) if steps else 0
            if saved and started >= saved + 2:
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, open(tmp_path / "killed.log").read()[-3000:]
    # What the killed run left: its last checkpoint and a journal counting the steps after it.
    started = json.loads((folder / journal.JOURNAL).read_text())["started"]
    saved = int(checkpoint.latest(str(folder)).rsplit("-", 1)[1])
    lost = started - saved
    # --max_train keeps a binomial number of examples (per-example roles): N from the run's record.
    n = json.loads((folder / checkpoint.RUN).read_text())["num_examples"]
    per_epoch = math.ceil(n / 20)
    assert saved == per_epoch * (saved // per_epoch) >= per_epoch and 0 < lost < 6 * per_epoch, (saved, started)

    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                             env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the killed attempt ran {lost} step(s) after it" in resumed.stdout
    meta = json.loads((tmp_path / "out" / "r" / "metadata.json").read_text())
    steps = 6 * per_epoch
    assert meta["steps"] == steps and meta["steps_lost_in_interruptions"] == [lost]
    assert meta["resumed_from_step"] == saved and meta["num_train_examples"] == n
    reference = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(20 / n, dp_accounting.GaussianDpEvent(1.0)), steps + lost)
    assert meta["epsilon"] == pytest.approx(_rdp_epsilon(reference, 1e-5), rel=1e-9)
    assert f"including {lost} steps lost in 1 interrupted attempt(s)" in meta["guarantee"]
    assert f"{steps} steps + {lost} lost in interrupted attempts" in resumed.stdout
    # The export is complete and its model finite; the checkpoint folder and claim are gone.
    import tensorflow as tf

    model_dir = tmp_path / "out" / "r"
    assert {"saved_model.pb", "metadata.json", "variables"} <= set(os.listdir(model_dir))
    assert (tmp_path / "out" / "r.json").is_file()
    loaded = tf.saved_model.load(str(model_dir))
    assert loaded.variables and all(np.isfinite(v.numpy()).all() for v in loaded.variables)
    logits = loaded.signatures["serving_default"](images=tf.zeros([2, 28, 28, 1]))["logits"]
    assert np.isfinite(logits.numpy()).all()
    assert sorted(os.listdir(tmp_path / "out")) == ["r", "r.json"]
