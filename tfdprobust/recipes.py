"""Recipes: named training configurations that follow a published private model.

A :class:`Recipe` is a frozen set of values of the training CLI's flags
(``python -m tfdprobust.experiments.mnist``), with the paper it follows (authors and title)
and where each value comes from. ``--recipe=NAME`` starts from the recipe's values; flags
given explicitly on the command line override them, and the run's results and metadata record
the recipe's name and every override. In Python, :func:`get` returns the recipe;
:meth:`Recipe.argv` gives the command-line arguments and :meth:`Recipe.command` the command.

The hyperparameters are the papers' (taken from their text and code, not tuned on our
private data), so choosing them costs no privacy. The accuracy, spread over seeds and wall
time each recipe reaches here are in ``docs/recipes.md``, each beside the command that
produced it; this module holds no figures.

This module loads no TensorFlow: the CLI checks ``--recipe`` before anything heavy loads.

Example:
    >>> get("scatternet_fmnist_eps3").values["model"]
    'scatternet_cnn'
    >>> names()
    ('scatternet_fmnist_eps3', 'scatternet_linear_fmnist_eps3', 'tempered_sigmoid_fmnist_eps3')
"""

import dataclasses
from typing import Any, Dict, Mapping, Tuple

from tfdprobust.errors import UsageError, require
from tfdprobust.registry import Registry

RECIPES: Registry = Registry("recipe")
"""The recipes by name."""

_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named configuration of the training CLI.

    Attributes:
        name: the registry key, ``--recipe=<name>``.
        paper: authors and title of the paper the recipe follows.
        source: where the hyperparameters come from (the paper's section, table or code).
        summary: one sentence on the model and what it is for.
        flags: ``(flag, value)`` pairs of the training CLI (flag names without ``--``).
        notes: where the recipe departs from the paper, and why.
    """

    name: str
    paper: str
    source: str
    summary: str
    flags: Tuple[Tuple[str, Any], ...]
    notes: str = ""

    def __post_init__(self):
        require(self.name and self.paper and self.source and self.summary,
                f"recipe {self.name!r} needs a name, a paper, a source and a summary")
        names = [flag for flag, _ in self.flags]
        require(len(set(names)) == len(names), f"recipe {self.name!r} sets a flag twice: {names}")
        for flag, value in self.flags:
            require(isinstance(flag, str) and flag and not flag.startswith("-"),
                    f"recipe {self.name!r}: flag names go without dashes, got {flag!r}")
            require(isinstance(value, _SCALARS), f"recipe {self.name!r}: --{flag} must be a bool, int, float "
                    f"or str, got {type(value).__name__}")

    @property
    def values(self) -> Dict[str, Any]:
        """The flag values as a dictionary."""
        return dict(self.flags)

    def argv(self, **overrides: Any) -> Tuple[str, ...]:
        """Command-line arguments of the recipe, ``overrides`` (flag=value) replacing or adding values."""
        values = {**self.values, **overrides}
        return tuple(_arg(flag, value) for flag, value in values.items())

    def command(self, **overrides: Any) -> str:
        """The training command of the recipe as one shell line."""
        return " ".join(("python -m tfdprobust.experiments.mnist", f"--recipe={self.name}",
                         *(_arg(flag, value) for flag, value in overrides.items())))


def _arg(flag: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no{flag}"
    return f"--{flag}={value}"


def register(recipe: Recipe) -> Recipe:
    """Adds ``recipe`` to :data:`RECIPES`."""
    RECIPES.register(recipe.name)(recipe)
    return recipe


def get(name: str) -> Recipe:
    """The recipe ``name``; an unknown name raises a UsageError listing the recipes."""
    try:
        return RECIPES.get(name)
    except UsageError:
        raise UsageError(f"--recipe={name!r} is unknown; choose one of {', '.join(names())}") from None


def names() -> Tuple[str, ...]:
    return RECIPES.names()


def apply(recipe: Recipe, fv) -> Tuple[Tuple[str, str], ...]:
    """Sets ``fv``'s flags the command line did not give to ``recipe``'s values.

    Returns:
        The overrides: ``(flag, value)`` of every recipe flag that was given explicitly
        (the given value, as text), for the run's metadata.
    """
    overrides = []
    for flag, value in recipe.flags:
        require(flag in fv, f"--recipe={recipe.name} sets --{flag}, which this command does not have")
        if fv[flag].present:
            overrides.append((flag, str(fv[flag].value)))
        else:
            fv[flag].value = value
    return tuple(overrides)


def as_text(recipe: Recipe) -> Mapping[str, str]:
    """The recipe's description for metadata."""
    return {"name": recipe.name, "paper": recipe.paper, "source": recipe.source}


_TRAMER_BONEH = ('Tramèr and Boneh, "Differentially Private Learning Needs Better Features (or Much More '
                 'Data)" (ICLR 2021)')
_FMNIST = (("dataset", "fashion_mnist"), ("target_epsilon", 3.0), ("delta", 1e-5), ("attack", "none"),
           ("optimizer", "momentum"), ("l2_clip", 0.1), ("epochs", 40), ("norm", "group"))

register(Recipe(
    name="scatternet_fmnist_eps3",
    paper=_TRAMER_BONEH,
    source="the authors' README (github.com/ftramer/Handcrafted-DP), `cnns.py --dataset=fmnist --use_scattering "
           "--batch_size=2048 --lr=4 --input_norm=GroupNorm --num_groups=27`: batch 2048, lr 4, SGD momentum 0.9 "
           "and C = 0.1 (the script's defaults), 40 epochs for (3, 1e-5); tanh as in the paper",
    summary="ScatterNet (J=2, L=8) + the authors' small CNN on Fashion-MNIST, DP-SGD at epsilon 3, the "
            "scattering precomputed once",
    flags=(*_FMNIST, ("model", "scatternet_cnn"), ("groups", 27), ("activation", "tanh"), ("batch_size", 2048),
           ("learning_rate", 4.0), ("precompute_features", True)),
    notes="sigma is calibrated here to epsilon 3 over 40 epochs by dp_accounting's RDP accountant (the paper "
          "gives sigma 2.15, whose epsilon its coarser RDP orders put at 3); Poisson batches divided by the "
          "expected batch size."))

register(Recipe(
    name="scatternet_linear_fmnist_eps3",
    paper=_TRAMER_BONEH,
    source="the authors' README (github.com/ftramer/Handcrafted-DP), `baselines.py --dataset=fmnist "
           "--batch_size=8192 --lr=16 --input_norm=GroupNorm --num_groups=27`: batch 8192, lr 16, SGD momentum "
           "0.9 and C = 0.1 (the script's defaults); 40 epochs as for the paper's other Fashion-MNIST models",
    summary="ScatterNet (J=2, L=8) + a linear classifier on Fashion-MNIST (the paper's best, 89.7%), DP-SGD at "
            "epsilon 3, the scattering precomputed once",
    flags=(*_FMNIST, ("model", "scatternet_linear"), ("groups", 27), ("batch_size", 8192),
           ("learning_rate", 16.0), ("precompute_features", True)),
    notes="the README gives sigma 4.05 without the epoch count; sigma is calibrated here to epsilon 3 over 40 "
          "epochs."))

register(Recipe(
    name="tempered_sigmoid_fmnist_eps3",
    paper='Papernot, Thakurta, Song, Chien and Erlingsson, "Tempered Sigmoid Activations for Deep Learning with '
          'Differential Privacy" (AAAI 2021)',
    source="Tramer and Boneh's rerun of Papernot et al.'s end-to-end tanh CNN on Fashion-MNIST (their README, "
           "`cnns.py --dataset=fmnist --batch_size=2048 --lr=4`, SGD momentum 0.9 and C = 0.1 by the script's "
           "defaults, 40 epochs for (3, 1e-5), 86.0% there); Papernot et al. report 86.1% at epsilon 2.7",
    summary="End-to-end tanh CNN on Fashion-MNIST pixels, DP-SGD at epsilon 3 (no handcrafted features)",
    flags=(*_FMNIST[:-1], ("model", "cnn"), ("norm", "none"), ("activation", "tanh"), ("batch_size", 2048),
           ("learning_rate", 4.0)),
    notes="the toolkit's `cnn` (conv 16@8x8/2, conv 32@4x4/2, dense 32) is the CNN of both papers; no "
          "normalization, as there."))
