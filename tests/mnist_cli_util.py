"""The training CLI's ``main`` run in-process, as a fixture for the test files that check its
flags (tests/test_experiments_mnist.py, tests/test_checkpoint.py)."""

import pytest
from absl import flags

from tfdprobust import cli, data
from tfdprobust.experiments import mnist


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    """Runs ``mnist.main`` with the given flags (offline: TFDS reports nothing prepared and no
    network); returns ``(exit code, stderr)``."""
    monkeypatch.setattr(data, "tfds_prepared", lambda name, tfds_dir: False)
    monkeypatch.setattr(data, "tfds_reachable", lambda timeout=3.0: False)

    def call(*argv):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["mnist", f"--export_dir={tmp_path}/out", "--verbose=0", *argv])
        try:
            code = cli.guarded(mnist.main)(["mnist"])
        except SystemExit as stop:
            code = stop.code
        return code, capsys.readouterr().err

    yield call
    flags.FLAGS.unparse_flags()
