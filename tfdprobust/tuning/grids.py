"""Light checks (NumPy only, no TensorFlow): grids and finite numbers, so the CLI can
refuse bad flags within a second, before TensorFlow is imported."""

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from tfdprobust.errors import UsageError, require
from tfdprobust.flagcheck import can_write_in

OBJECTIVES = ("robust", "natural", "both")
TUNER_NAMES = ("grid", "random", "bayesian", "hyperband")
#: How trials are scored. ``noisy_count``: the number of correct validation images (from
#: the private pool) plus Gaussian noise, composed into the search's epsilon.
#: ``public``: a validation set from a public source (the dataset's test split, disjoint
#: from the reported test images), declared public, exact and free.
VALIDATIONS = ("noisy_count", "public")
#: Default std of the Gaussian noise on each validation count (sensitivity 1). With 500
#: validation images that is a 2% std on an accuracy; its privacy cost is printed.
DEFAULT_VAL_NOISE = 10.0


def parse_grid(text: str, flag: str) -> Tuple[float, ...]:
    """Parses ``"0.1,1,10"`` or ``"logspace:0.01:10:4"`` into a sorted tuple of positive floats.

    Example:
        >>> parse_grid("1, 0.1,10", "--clip_grid")
        (0.1, 1.0, 10.0)
        >>> parse_grid("logspace:0.1:10:3", "--lr_grid")
        (0.1, 1.0, 10.0)
    """
    text = (text or "").strip()
    require(text, f"{flag} is empty; give comma-separated positive values, e.g. {flag}=0.1,1,10")
    try:
        if text.startswith("logspace:"):
            _, lo, hi, num = text.split(":")
            lo, hi, n = float(lo), float(hi), int(num)
            require(math.isfinite(lo) and math.isfinite(hi) and lo > 0 and hi > 0 and n >= 1,
                    f"{flag}={text}: logspace needs positive ends and a count >= 1, e.g. logspace:0.01:10:4")
            values = [float(f"{v:.6g}") for v in np.geomspace(lo, hi, n)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except UsageError:
        raise
    except ValueError:
        raise UsageError(f"{flag}={text!r} is not a list of numbers; use e.g. {flag}=0.1,1,10 "
                         f"or {flag}=logspace:0.01:10:4") from None
    return validate_grid(values, flag)


def validate_grid(values: Sequence[float], flag: str) -> Tuple[float, ...]:
    """Checks a grid: non-empty, finite, positive, no duplicates; returns it sorted."""
    values = tuple(float(v) for v in values)
    require(len(values) > 0, f"{flag} is empty; give comma-separated positive values, e.g. {flag}=0.1,1,10")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    require(not bad, f"{flag} must hold only finite values > 0, got {', '.join(f'{v:g}' for v in bad)}")
    require(len(set(values)) == len(values), f"{flag} has duplicate values: {', '.join(f'{v:g}' for v in values)}")
    return tuple(sorted(values))


def require_finite(value: Optional[float], flag: str, low: Optional[float] = None, strict: bool = True) -> None:
    """``flag`` must be a finite number (and > / >= ``low``)."""
    if value is None:
        return
    ok = math.isfinite(value) and (low is None or (value > low if strict else value >= low))
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    require(ok, f"--{flag.lstrip('-')} must be a finite number{bound}, got {value}")


def check_destination(cfg) -> None:
    """The tuning dir (or its nearest existing parent) must be writable (probed); nothing is left."""
    path = os.path.abspath(cfg.tuning_dir)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    # a write probe: for root, os.access says yes to /proc and to nothing on a read-only mount
    require(can_write_in(path),
            f"--tuning_dir={cfg.tuning_dir} cannot be created or written ({path} is not a writable folder); "
            "choose another --tuning_dir")


def check_search_folder(tuning_dir: str, project: str, overwrite: bool, new_ledger: bool,
                        config_file: str = "search_config.json") -> None:
    """The checks of ``<tuning_dir>/<project>`` that need no config: it is a folder, it is
    ours (holds ``config_file``) or empty, even with ``--overwrite`` (which deletes it),
    and ``--new_ledger`` does not orphan trials of the current ledger.

    Raises:
        UsageError: naming ``--tuning_dir``/``--project`` and the fix.
    """
    project_dir = os.path.join(tuning_dir, project)
    if os.path.exists(tuning_dir):
        require(os.path.isdir(tuning_dir), f"--tuning_dir={tuning_dir} is a file; give a folder")
    has_trials = os.path.isdir(project_dir) and any(n.startswith("trial_") for n in os.listdir(project_dir))
    # A new ledger under trials that the old one counted would publish them uncovered.
    require(not (new_ledger and not overwrite and has_trials),
            f"--new_ledger: {project_dir} already holds trials recorded in the current ledger, and their "
            "results would be published without a guarantee; pass --overwrite too, or use a new --project")
    if not os.path.exists(project_dir):
        return
    require(os.path.isdir(project_dir), f"--tuning_dir={tuning_dir}: {project_dir} is a file; "
            "choose another --project")
    ours = os.path.exists(os.path.join(project_dir, config_file)) or not os.listdir(project_dir)
    require(ours, f"--tuning_dir={tuning_dir}: {project_dir} exists but holds no {config_file}, so it is not "
            "a tfdprobust search" + (" and --overwrite would delete it" if overwrite else "")
            + "; choose another --tuning_dir or --project")
