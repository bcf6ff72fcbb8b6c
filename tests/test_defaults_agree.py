"""The training CLI, the tuner and the library's configs share one default recipe
(the one measured in experiments/defaults/); a default changed in one place only fails here."""

import json
import subprocess
import sys

from tfdprobust.train_step import DPConfig, TrainConfig
from tfdprobust.run_config import RunConfig

_READ = """
import json, sys
from absl import flags
if sys.argv[1] == "train":
    import tfdprobust.experiments.mnist  # noqa: F401  (defines the training CLI's flags)
else:
    from tfdprobust.tuning.cli import define_flags
    define_flags()
print(json.dumps({k: flags.FLAGS[k].default for k in sys.argv[2:]}))
"""

KEYS = ["batch_size", "noise", "adv_weight", "steps", "eps", "optimizer"]


def _defaults(which, keys):
    proc = subprocess.run([sys.executable, "-c", _READ, which, *keys], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_training_cli_tuner_and_configs_agree():
    train = _defaults("train", KEYS + ["l2_clip", "learning_rate"])
    tune = _defaults("tune", KEYS + ["clip_grid", "lr_grid"])
    cfg, dp, run = TrainConfig(), DPConfig(), RunConfig()
    library = {"batch_size": run.batch_size, "noise": dp.noise_multiplier, "adv_weight": cfg.adv_weight,
               "steps": cfg.attack.steps, "eps": cfg.attack.eps, "optimizer": cfg.optimizer}
    for key in KEYS:
        assert train[key] == tune[key] == library[key], (key, train[key], tune[key], library[key])
    assert train["l2_clip"] == dp.l2_clip
    # the CLI's learning rate is None = "the DP default", which is the library's
    assert train["learning_rate"] in (None, cfg.learning_rate)
    from tfdprobust.tuning.grids import parse_grid

    # the tuner's default grids are centred on the default point, so a default search brackets it
    clips, lrs = parse_grid(tune["clip_grid"], "--clip_grid"), parse_grid(tune["lr_grid"], "--lr_grid")
    assert sorted(clips)[len(clips) // 2] == dp.l2_clip
    assert sorted(lrs)[len(lrs) // 2] == cfg.learning_rate
