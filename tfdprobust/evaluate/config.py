"""What an evaluation runs: one frozen, validated :class:`SuiteConfig`."""

import dataclasses
from typing import Tuple

from tfdprobust.errors import require

SECTIONS = ("sweeps", "ensemble", "iterations", "geometry", "curvature", "corruptions")
DATASETS = ("mnist", "fashion_mnist", "kmnist", "cifar10")
INPUT_RANGES = ("unit", "byte", "standardized")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """What to run. Defaults reproduce the MNIST experiments of seeds/004 §3 and 001 §4.3.

    Attributes:
        num_examples: test examples evaluated (a fixed seeded subset, same for every model).
        batch_size: examples per attack batch.
        sections: subset of :data:`SECTIONS`.
        preset: attack ensemble of the ``ensemble`` section and of the robust accuracy
            (:data:`tfdprobust.ensemble.PRESETS`: ``quick`` or ``standard``).
        sweep_attacks: single attacks swept over eps, for the curves (l_inf ones use
            ``eps_linf``, l2 ones ``eps_l2``).
        eps_linf, eps_l2: eps grids; must start at 0 (the eps=0 sanity check). The
            ensemble runs at every eps of both grids.
        steps: iterations of iterative sweep attacks.
        fool_eps, fool_step_sizes, fool_max_steps: the PGD iterations-to-fool grid.
        geometry_examples: examples for DeepFool distances (<= num_examples).
        deepfool_iterations: iterations of iterative DeepFool.
        curvature_examples, curvature_k: Hessian eigenvalues: examples and how many.
        corruptions: names (empty: all registered).
        check_examples: examples for the sanity checks that re-attack (SPSA, Square,
            convergence).
        square_queries: query budget of the black-box (Square) sanity check.
        seed: example subset, random starts and corruptions.
    """

    num_examples: int = 1000
    batch_size: int = 500
    sections: Tuple[str, ...] = SECTIONS
    preset: str = "standard"
    sweep_attacks: Tuple[str, ...] = ("fgsm", "pgd_linf", "pgd_l2")
    eps_linf: Tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    eps_l2: Tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
    steps: int = 40
    fool_eps: Tuple[float, ...] = (0.1, 0.2, 0.3)
    fool_step_sizes: Tuple[float, ...] = (0.01,)
    fool_max_steps: int = 100
    geometry_examples: int = 1000
    deepfool_iterations: int = 50
    curvature_examples: int = 100
    curvature_k: int = 15
    corruptions: Tuple[str, ...] = ()
    check_examples: int = 100
    square_queries: int = 1000
    seed: int = 0

    def __post_init__(self):
        # The checks that need no TensorFlow come first, so a bad flag fails in a second;
        # names come from the registries' source (tfdprobust.flagcheck).
        import math

        from tfdprobust import flagcheck

        require(self.num_examples >= 1, f"--num_examples must be >= 1, got {self.num_examples}")
        require(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        for s in self.sections:
            require(s in SECTIONS, f"--sections: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
        presets = flagcheck.registered_names("tfdprobust.ensemble", "PRESETS")
        require(self.preset in presets, f"--preset: unknown preset {self.preset!r}; choose one of: "
                f"{', '.join(presets)}")
        for grid, flag in ((self.eps_linf, "--eps_linf"), (self.eps_l2, "--eps_l2"), (self.fool_eps, "--fool_eps"),
                           (self.fool_step_sizes, "--fool_step_sizes")):
            require(all(math.isfinite(e) for e in grid), f"{flag} must hold finite numbers, got {list(grid)}")
        for grid, flag in ((self.eps_linf, "--eps_linf"), (self.eps_l2, "--eps_l2")):
            require(len(grid) >= 2 and grid[0] == 0 and list(grid) == sorted(grid),
                    f"{flag} must be increasing and start at 0 (eps=0 is a sanity check), got {list(grid)}")
        require(self.eps_linf[-1] <= 1, f"--eps_linf values must be <= 1 for images in [0, 1], got {self.eps_linf[-1]}")
        known = flagcheck.attack_names()
        for name in self.sweep_attacks:
            require(name in known, f"--sweep_attacks: unknown attack {name!r}; choose one of: {', '.join(known)}")
        require(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        for e in self.fool_eps:
            require(0 < e <= 1, f"--fool_eps values must be in (0, 1], got {e}")
        for a in self.fool_step_sizes:
            require(a > 0, f"--fool_step_sizes must be > 0, got {a}")
        require(self.curvature_examples >= 1, f"--curvature_examples must be >= 1, got {self.curvature_examples}")
        require(self.curvature_k >= 1, f"--curvature_k must be >= 1, got {self.curvature_k}")
        require(self.check_examples >= 1, f"--check_examples must be >= 1, got {self.check_examples}")
        require(self.square_queries >= 1, f"--square_queries must be >= 1, got {self.square_queries}")
        require(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        from tfdprobust import corruptions  # NumPy, SciPy and scikit-image: no TensorFlow

        try:
            corruptions.corruption_names(self.corruptions)
        except Exception as e:  # noqa: BLE001 - name the flag
            require(False, f"--corruptions: {e}")
        self._check_attacks()

    def _check_attacks(self) -> None:
        """The attack-specific limits of every sweep (last: it imports TensorFlow)."""
        from tfdprobust import attacks

        for name in self.sweep_attacks:
            cfg = attacks.AttackConfig(name, eps=0.0)
            for e in (self.eps_linf if cfg.norm == "linf" else self.eps_l2):
                attacks.AttackConfig(name, eps=e, steps=self.steps)

    def sweep_grid(self, attack: str) -> Tuple[float, ...]:
        from tfdprobust import attacks

        return self.eps_linf if attacks.AttackConfig(attack, eps=0.0).norm == "linf" else self.eps_l2


# --quick: a smaller suite for a routine check; the ensemble is the quick preset.
QUICK = dict(num_examples=200, preset="quick", eps_linf=(0.0, 0.1, 0.2, 0.3), eps_l2=(0.0, 1.0, 2.0, 3.0),
             steps=20, fool_max_steps=50, deepfool_iterations=20, curvature_examples=20, curvature_k=10,
             check_examples=50, square_queries=300)
