"""Privacy accounting for DP-SGD, through ``dp_accounting``.

Nothing here computes a privacy curve by hand: every epsilon comes from one of
``dp_accounting``'s accountants (``--accountant``: ``rdp``, the default, or ``pld``,
privacy loss distributions, which is tighter) composing the ``DpEvent`` that the run's
batch sampler (:mod:`tfdprobust.sampling`) says it executed, under that sampler's
neighbouring relation:

* ``"poisson"``: the Poisson-subsampled Gaussian mechanism composed over the steps,
  example-level add-or-remove-one adjacency (DP-SGD's amplification by sampling).
* ``"shuffle"``: no amplification-by-sampling theorem covers shuffled batches (Chua et
  al., 2024, "How private are DP-SGD implementations?"), and removing one example
  re-partitions every later batch, so the claim is *replace-one* adjacency: one Gaussian
  mechanism of sensitivity 2C per epoch.

Both protect every intermediate model as well as the final one.

Example:
    >>> spec = AccountingSpec(num_examples=60000, batch_size=256, epochs=15,
    ...                       noise_multiplier=1.1, delta=1e-5, sampling="poisson")
    >>> round(epsilon(spec), 2)
    1.28
    >>> round(epsilon(spec.replace(sampling="shuffle")), 1)   # replace-one, sensitivity 2C
    57.0
"""

import dataclasses
import math
from typing import Optional, Tuple

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from tfdprobust import sampling as samplers
from tfdprobust.errors import UsageError, require
from tfdprobust.registry import Registry

SAMPLINGS = samplers.SAMPLERS.names()
ACCOUNTANTS: Registry = Registry("accountant")
ACCOUNTANTS.register("rdp")(rdp_privacy_accountant.RdpAccountant)
# PLD (Meiser & Mohammad; Koskela et al.) with dp_accounting's default discretization,
# which rounds pessimistically: its epsilon is an upper bound, tighter than RDP's.
ACCOUNTANTS.register("pld")(pld_privacy_accountant.PLDAccountant)


@dataclasses.dataclass(frozen=True)
class AccountingSpec:
    """What a DP-SGD run did, as far as privacy is concerned.

    Attributes:
        num_examples: size N of the private training set.
        batch_size: the (expected) batch size B; q = B / N.
        epochs: passes over the data (may be fractional with Poisson sampling).
        noise_multiplier: sigma; the noise std is sigma * C per step.
        delta: target delta; must be < 1/N to mean anything.
        sampling: a registered sampler of :mod:`tfdprobust.sampling` ("poisson" or
            "shuffle"); it fixes the event and the neighbouring relation.
        steps: number of steps actually run. ``None`` derives it from epochs:
            ``ceil(epochs * N / B)``, which is what the training loop runs.
        accountant: ``rdp`` or ``pld`` (see :data:`ACCOUNTANTS`).
        extra_noise_multipliers: further Gaussian releases on every step's batch, as noise
            std over add-or-remove-one sensitivity (adaptive clipping's noised count,
            :func:`tfdprobust.clipping.count_noise_multiplier`); composed into the event.
        interrupted_steps: steps that earlier, killed attempts of this run took after their
            last checkpoint, one entry per interruption (:mod:`tfdprobust.checkpoint`). The
            resumed model does not contain them, but their noise was drawn and their models
            may have been seen, so each is composed into the event as a run of its own.
    """

    num_examples: int
    batch_size: int
    epochs: float
    noise_multiplier: float
    delta: float
    sampling: str = "poisson"
    steps: Optional[int] = None
    accountant: str = "rdp"
    extra_noise_multipliers: Tuple[float, ...] = ()
    interrupted_steps: Tuple[int, ...] = ()

    def __post_init__(self):
        require(self.num_examples > 0, f"num_examples must be > 0, got {self.num_examples}")
        require(
            0 < self.batch_size <= self.num_examples,
            f"--batch_size must be in [1, {self.num_examples}] (the number of training "
            f"examples), got {self.batch_size}",
        )
        require(math.isfinite(self.epochs) and self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        require(
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
            f"--noise must be a finite number >= 0 (it is the noise multiplier sigma), got "
            f"{self.noise_multiplier}",
        )
        require(
            0 < self.delta < 1.0 / self.num_examples,
            f"--delta must be in (0, 1/N) = (0, {1.0 / self.num_examples:.3g}) for N="
            f"{self.num_examples} training examples, got {self.delta}",
        )
        require(
            self.sampling in SAMPLINGS,
            f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}",
        )
        require(self.steps is None or self.steps > 0, f"steps must be > 0, got {self.steps}")
        require(self.accountant in ACCOUNTANTS,
                f"--accountant must be one of {', '.join(ACCOUNTANTS.names())}, got {self.accountant!r}")
        require(all(math.isfinite(m) and m > 0 for m in self.extra_noise_multipliers),
                f"extra noise multipliers must be finite and > 0, got {self.extra_noise_multipliers}")
        require(all(isinstance(s, int) and s > 0 for s in self.interrupted_steps),
                f"interrupted steps must be integers > 0, got {self.interrupted_steps}")
        # dp_accounting's PLD accountant cannot compose several Gaussians under one
        # PoissonSampledDpEvent; refusing beats reporting the epsilon of another event.
        require(not (self.extra_noise_multipliers and self.accountant == "pld" and self.sampling == "poisson"),
                "--accountant=pld cannot account adaptive clipping's extra release under Poisson sampling; "
                "use --accountant=rdp")

    @property
    def sampler(self) -> samplers.BatchSampler:
        return samplers.make_sampler(self.sampling, self.num_examples, self.batch_size)

    @property
    def sampling_probability(self) -> float:
        return self.batch_size / self.num_examples

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.epochs * self.steps_per_epoch)

    @property
    def neighboring_relation(self) -> dp_accounting.NeighboringRelation:
        return self.sampler.neighboring_relation

    def replace(self, **changes) -> "AccountingSpec":
        return dataclasses.replace(self, **changes)


def dp_event(spec: AccountingSpec) -> dp_accounting.DpEvent:
    """The ``DpEvent`` describing the whole run, as its sampler states it.

    Example:
        >>> spec = AccountingSpec(1000, 100, 2, 1.0, 1e-5, "shuffle")
        >>> dp_event(spec)
        SelfComposedDpEvent(event=GaussianDpEvent(noise_multiplier=0.5), count=2)
    """
    event = spec.sampler.dp_event(spec.noise_multiplier, spec.total_steps, spec.extra_noise_multipliers)
    if not spec.interrupted_steps:
        return event
    # Each interrupted attempt is composed as it ran: under shuffling its partial epoch was a
    # mechanism of its own (the resumed epoch draws a new permutation).
    lost = [spec.sampler.dp_event(spec.noise_multiplier, steps, spec.extra_noise_multipliers)
            for steps in spec.interrupted_steps]
    return dp_accounting.ComposedDpEvent([event, *lost])


def make_accountant(
    kind: str = "rdp",
    relation: dp_accounting.NeighboringRelation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
) -> dp_accounting.PrivacyAccountant:
    """A fresh ``dp_accounting`` accountant of ``kind`` for ``relation``.

    Our replace-one events already carry the factor 2 of the sensitivity (the shuffle
    sampler halves sigma: an example's slot moves the sum by up to 2C). dp_accounting's RDP
    accountant reads a ``GaussianDpEvent`` the same way under every relation, and so did its
    PLD accountant up to 0.4; from 0.5 on, PLD under ``REPLACE_ONE`` doubles the sensitivity
    itself, which would count the factor twice (epsilon 2.3 instead of 1.15 for one epoch at
    sigma 7.1). There the PLD accountant composes our events as the sensitivity-1 Gaussians
    they are.
    """
    if (kind == "pld" and relation == dp_accounting.NeighboringRelation.REPLACE_ONE
            and _pld_doubles_replace_one()):
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    return ACCOUNTANTS.get(kind)(neighboring_relation=relation)


_PLD_DOUBLES: Optional[bool] = None


def _pld_doubles_replace_one() -> bool:
    """Whether the installed dp_accounting's PLD accountant doubles a Gaussian's sensitivity
    under ``REPLACE_ONE`` (asked of the library by one probe, not by its version number)."""
    global _PLD_DOUBLES
    if _PLD_DOUBLES is None:
        event = dp_accounting.GaussianDpEvent(2.0)
        relations = (dp_accounting.NeighboringRelation.REPLACE_ONE, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
        replace, add_remove = (ACCOUNTANTS.get("pld")(neighboring_relation=r).compose(event).get_epsilon(1e-5)
                               for r in relations)
        _PLD_DOUBLES = replace > 1.5 * add_remove
    return _PLD_DOUBLES


def epsilon_of_event(
    event: dp_accounting.DpEvent,
    delta: float,
    accountant: str = "rdp",
    relation: dp_accounting.NeighboringRelation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
) -> float:
    """Epsilon at ``delta`` of any composed event, e.g. K tuning trials (see :func:`compose`)."""
    return float(make_accountant(accountant, relation).compose(event).get_epsilon(delta))


def epsilon(spec: AccountingSpec) -> float:
    """Epsilon at ``spec.delta``. ``inf`` when sigma is 0 (no privacy)."""
    if spec.noise_multiplier == 0:
        return math.inf
    return epsilon_of_event(dp_event(spec), spec.delta, spec.accountant, spec.neighboring_relation)


def compose(spec: AccountingSpec, runs: int) -> dp_accounting.DpEvent:
    """The event for ``runs`` independent trainings on the same private data."""
    require(runs >= 1, f"runs must be >= 1, got {runs}")
    return dp_accounting.SelfComposedDpEvent(dp_event(spec), runs)


def calibrate_noise(target_epsilon: float, spec: AccountingSpec) -> float:
    """Smallest noise multiplier whose epsilon does not exceed ``target_epsilon``.

    Uses ``dp_accounting.calibrate_dp_mechanism`` (bracketing + Brent's method) with the
    spec's accountant and neighbouring relation; it guarantees the returned sigma gives
    epsilon <= target: it never overshoots the budget. ``spec.noise_multiplier`` is ignored.

    Raises:
        UsageError: if the target is not reachable (e.g. <= 0, or too small for sigma
            up to 1e4 with this sampling and number of steps).

    Example:
        >>> spec = AccountingSpec(60000, 256, 15, 0.0, 1e-5, "poisson")
        >>> sigma = calibrate_noise(1.0, spec)
        >>> epsilon(spec.replace(noise_multiplier=sigma)) <= 1.0
        True
    """
    require(math.isfinite(target_epsilon) and target_epsilon > 0,
            f"--target_epsilon must be a finite number > 0, got {target_epsilon}")
    max_sigma = 1e4

    def make_event(sigma: float) -> dp_accounting.DpEvent:
        return dp_event(spec.replace(noise_multiplier=sigma))

    # Bracket geometrically around sigma = 1 (doubling up or halving down): extreme sigmas
    # are cheap for RDP but make PLD discretize an enormous privacy-loss distribution.
    def too_small(sigma: float) -> bool:
        return epsilon(spec.replace(noise_multiplier=sigma)) > target_epsilon

    low = high = 1.0
    if too_small(high):
        while too_small(high):
            high *= 2
            if high > max_sigma:
                raise UsageError(
                    f"--target_epsilon={target_epsilon} is unreachable: even noise {max_sigma:g} gives "
                    "more; raise the target, or use fewer epochs or Poisson sampling"
                )
        low = high / 2
    else:
        while not too_small(low) and low > 1e-3:
            low /= 2
        high = low * 2
    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(spec.accountant, spec.neighboring_relation),
        make_event,
        target_epsilon,
        spec.delta,
        dp_accounting.ExplicitBracketInterval(low, high),
        tol=1e-4,
    )
    return float(sigma)


def guarantee_statement(spec: AccountingSpec, unprotected: str = "") -> str:
    """One plain sentence saying which guarantee the reported epsilon is.

    Args:
        unprotected: a clause naming examples the guarantee does *not* cover (e.g. a
            public set taken from the private pool with ``--public_from_private``).
    """
    eps = epsilon(spec)
    if math.isinf(eps):
        return "no differential privacy (noise multiplier 0): epsilon is infinite"
    sampler = spec.sampler
    text = (
        f"({eps:.3g}, {spec.delta:g})-DP, example-level, {sampler.adjacency} adjacency, "
        f"{spec.accountant.upper()} accounting (dp_accounting) over {spec.total_steps} steps with "
        f"sigma={spec.noise_multiplier:.4g}; {sampler.describe()}; noise and sampling drawn from "
        "OS entropy"
    )
    if spec.interrupted_steps:
        lost = sum(spec.interrupted_steps)
        text += (f"; including {lost} steps lost in {len(spec.interrupted_steps)} interrupted attempt(s) after "
                 "their last checkpoint (their noise was drawn, so they are composed too)")
    if unprotected:
        text += f"; NOT covered: {unprotected}"
    return text
