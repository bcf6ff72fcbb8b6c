"""Shared helpers of the tuner tests: a tiny search config and an independent composition."""

import math
import os

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

from tfdprobust import attacks
from tfdprobust.data import DataConfig
from tfdprobust.train_step import DPConfig, TrainConfig

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
TINY_ATTACK = attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=1, random_start=True)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def data_dir():
    return SHARED_DATA if os.path.isdir(os.path.join(SHARED_DATA, "mnist")) else None


def tiny_config(tuning_dir, clip_grid=(0.5, 2.0), lr_grid=(0.5, 2.0), run_kw=None, **kw):
    """A search that trains 6 steps per trial on 600 images and validates on 100."""
    from tfdprobust import run_config
    from tfdprobust.tuning import TuneConfig

    run = dict(train=TrainConfig(attack=TINY_ATTACK, dp=DPConfig(noise_multiplier=1.0)), batch_size=100,
               data=DataConfig(max_train=700, max_test=100, public_examples=16, data_dir=data_dir()),
               epochs=1, delta=1e-4, eval_attack=attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=2),
               export_dir=None, verbose=0)
    # The search's own ledger store (not the test's): module fixtures stay isolated.
    run["ledger_dir"] = str(tuning_dir).rstrip(os.sep) + "-ledger-store"
    run.update(run_kw or {})
    base = dict(run=run_config.RunConfig.make(**run), clip_grid=clip_grid, lr_grid=lr_grid,
                tuning_dir=str(tuning_dir), validation_examples=100,
                val_attack=attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=2), export_best=0)
    base.update(kw)
    return TuneConfig(**base)


def poisson_trial(n, b, sigma, epochs=1):
    steps = epochs * math.ceil(n / b)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(b / n, dp_accounting.GaussianDpEvent(sigma)), steps)


def direct_epsilon(events, delta, relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE):
    """Composes ``events`` with dp_accounting's RDP accountant directly (no tfdprobust code)."""
    accountant = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def strict_load(path):
    """json.load that fails on bare NaN / Infinity."""
    import json

    def bad(token):
        raise ValueError(f"{path}: non-standard JSON constant {token}")

    with open(path) as f:
        return json.load(f, parse_constant=bad)
