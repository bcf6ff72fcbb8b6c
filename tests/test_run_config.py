"""tfdprobust.run_config: what a run's settings decide before any data is touched."""

import pytest

from tfdprobust.run_config import RunConfig, default_run_name
from tfdprobust.train_step import DPConfig, TrainConfig


@pytest.mark.parametrize("kwargs, dp, part", [
    ({}, True, "-dp-sigma7.1-"),
    ({"target_epsilon": 3.0}, True, "-dp-eps3-"),  # sigma is not known before calibration
    ({"target_epsilon": 3.0}, False, "-nodp-"),
])
def test_default_run_name_names_the_privacy_setting_that_decided_sigma(kwargs, dp, part):
    cfg = RunConfig(train=TrainConfig(dp=DPConfig(enabled=dp, noise_multiplier=7.1)), **kwargs)
    name = default_run_name(cfg)
    assert part in name and name.count("sigma") + name.count("eps") == (1 if dp else 0), name
