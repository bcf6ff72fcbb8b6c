"""Checks of command-line input that run before TensorFlow is imported.

Importing TensorFlow takes 4 s on an idle machine and 15 s or more on a busy one. A
typo must not cost that, so every CLI first runs the checks that need neither
TensorFlow nor data: numbers (finite, in range), names, flag combinations and
destinations. The configs built afterwards validate everything again; these checks
only move the error to the first second.

Names that live in registries of TensorFlow modules (models, optimizers, clipping
strategies, attack presets) are read from those modules' source with :mod:`ast`
(:func:`registered_names`), so there is no second list to keep in sync.

Example::

    from tfdprobust import flagcheck
    flagcheck.finite_floats(FLAGS)
    flagcheck.ranges(FLAGS, {"noise": ">=0", "l2_clip": ">0", "delta": "(0,1)"})
    flagcheck.choice(FLAGS, "model", flagcheck.registered_names("tfdprobust.models", "MODELS"))
"""

import ast
import functools
import importlib.util
import math
import os
import tempfile
from typing import Dict, Optional, Sequence, Tuple

from tfdprobust.errors import require


# ----------------------------------------------------------------------------- names
def _source_path(module: str) -> str:
    """The file of ``module`` (or the folder of a package), found without importing it or
    its parent packages: ``importlib.util.find_spec`` would import ``tfdprobust.attacks``,
    and with it TensorFlow, to find ``tfdprobust.attacks.apgd``."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot find the package {top}")
    path = os.path.join(spec.submodule_search_locations[0], *rest)
    return path if os.path.isdir(path) else path + ".py"


@functools.lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module:
    path = _source_path(module)
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def registered_names(modules, registry: str, helper: Optional[str] = None) -> Tuple[str, ...]:
    """Names registered as ``REGISTRY.register("name")`` (decorator or call), or through a
    ``helper("name", ...)`` function, in the source of ``modules`` (one module name or a
    sequence), read without importing them (no TensorFlow).

    Only literal names are seen; ``tests/test_bad_input.py`` checks that they equal the
    imported registry's ``names()`` for every registry a CLI checks this way.
    """
    names = []
    for module in ([modules] if isinstance(modules, str) else modules):
        found = []
        for node in ast.walk(_module_tree(module)):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            func = node.func
            if ((isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name)
                 and func.value.id == registry) or (helper and isinstance(func, ast.Name) and func.id == helper)):
                found.append((node.lineno, node.args[0].value))
        names += [name for _, name in sorted(found)]  # source order, as the registry fills
    return tuple(names)


def package_modules(package: str) -> Tuple[str, ...]:
    """The modules of ``package`` (its ``*.py`` files), without importing them."""
    folder = _source_path(package)
    return tuple(f"{package}.{name[:-3]}" for name in sorted(os.listdir(folder))
                 if name.endswith(".py") and name != "__init__.py")


def attack_names() -> Tuple[str, ...]:
    """The names in :data:`tfdprobust.attacks.ATTACKS` (registered through
    ``attacks.config._register``), read from the attack modules' source."""
    modules = package_modules("tfdprobust.attacks")
    init = open(os.path.join(_source_path("tfdprobust.attacks"), "__init__.py"), encoding="utf-8").read()
    # the registry fills in the order attacks/__init__.py imports the modules
    def imported_at(module):
        short = module.rsplit(".", 1)[1]
        spots = [init.find(f"tfdprobust.attacks import {short}"), init.find(f"tfdprobust.attacks.{short} import")]
        return min([p for p in spots if p >= 0], default=len(init))

    modules = sorted(modules, key=lambda m: (imported_at(m), m))
    return registered_names(modules, "ATTACKS", helper="_register")


def constant(module: str, name: str):
    """The literal value of the module-level assignment ``name = ...`` in ``module``'s
    source (e.g. a tuple of choices), without importing the module."""
    for node in _module_tree(module).body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{module} has no literal module-level {name}")


def choice(fv, name: str, choices: Sequence[str]) -> None:
    """``--name`` must be one of ``choices`` (unset flags pass)."""
    value = fv[name].value
    require(value is None or value in choices,
            f"--{name}={value!r} is unknown; choose one of {', '.join(choices)}")


def refuse_ignored(fv, rows: Sequence[Tuple[str, bool, str]]) -> None:
    """Flags that the chosen mode ignores are errors: whoever types ``--nodp --noise=3``
    believes noise is added. ``rows`` is a table of ``(flag, ignored, why)``; a flag given
    on the command line whose ``ignored`` holds is refused, naming ``why`` and the fix."""
    for name, ignored, why in rows:
        require(not (ignored and fv[name].present), f"--{name} has no effect: {why}; drop --{name}")


# ----------------------------------------------------------------------------- numbers
def finite_floats(fv) -> None:
    """Every float flag (and every number in a list flag) must be finite: ``inf`` or
    ``nan`` would reach the training or the accountant (which hangs on an infinite sigma)."""
    for name in fv:
        flag = fv[name]
        value = flag.value
        if isinstance(value, float) and not math.isfinite(value):
            require(False, f"--{flag.name} must be a finite number, got {value}; pass a finite value")
        if isinstance(value, list) and not flag.flag_type().startswith("multi"):
            for v in value:
                try:
                    number = float(v)
                except (TypeError, ValueError):
                    continue
                require(math.isfinite(number), f"--{flag.name} must hold finite numbers, got {v}; "
                        "pass finite values")


def list_choices(fv, name: str, choices: Sequence[str]) -> None:
    """Every entry of the list flag ``--name`` is one of ``choices``."""
    for value in fv[name].value or []:
        require(value in choices, f"--{name}: {value!r} is unknown; choose from {', '.join(choices)}")


def list_numbers(fv, name: str, rule: str, kind: type = float, allow_empty: bool = False) -> None:
    """Every entry of the list flag ``--name`` is a number of ``kind`` that obeys ``rule``
    (see :func:`ranges`); the list is not empty unless ``allow_empty`` (``--name=`` then
    means "none", e.g. no l2 radii)."""
    values = [v for v in (fv[name].value or []) if v.strip()]
    require(values or allow_empty, f"--{name} is empty; give comma-separated values")
    for v in values:
        try:
            number = kind(v)
        except ValueError:
            require(False, f"--{name}: {v!r} is not {'an integer' if kind is int else 'a number'}; "
                    f"give comma-separated {'integers' if kind is int else 'numbers'}")
        _in_range(number, rule, f"--{name} entries")


def _in_range(value, rule: str, what: str) -> None:
    if rule.startswith("(0,") and rule not in _BOUNDS:
        low, high, open_low, open_high = 0, float(rule[3:-1]), True, False
    else:
        low, high, open_low, open_high = _BOUNDS[rule]
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and (
        high is None or (value < high if open_high else value <= high))
    shown = rule if rule.startswith(("(", "[")) else rule.replace(">", "> ").replace("> =", ">= ")
    require(ok, f"{what} must be {'in ' if rule[0] in '([' else ''}{shown}, got {value}")


_BOUNDS = {">0": (0, None, True, True), ">=0": (0, None, False, True), ">=1": (1, None, False, True),
           "(0,1)": (0, 1, True, True), "[0,1]": (0, 1, False, False), "(0,1]": (0, 1, True, False)}


def ranges(fv, spec: Dict[str, str]) -> None:
    """Each ``--name`` (if set) lies in its interval: ``>0``, ``>=0``, ``>=1``, ``(0,1)``,
    ``[0,1]``, ``(0,1]``, or ``(0,X]`` for an upper bound X. The error says the range."""
    for name, rule in spec.items():
        value = fv[name].value
        if value is not None:
            _in_range(value, rule, f"--{name}")


# ----------------------------------------------------------------------------- paths
def nearest_existing(path: str) -> str:
    """``path`` or its nearest ancestor that exists (what a write must be probed in)."""
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    return existing


def can_write_in(folder: str) -> bool:
    """Whether a file can be created in the existing ``folder``: a real write probe.

    ``os.access`` is not enough: for root it says yes to ``/proc`` (where ``mkdir`` fails)
    and to folders on a read-only mount only the kernel's ``EROFS`` tells. The probe is a
    uniquely named empty folder, created and removed at once; nothing is left behind.
    """
    if not os.path.isdir(folder):
        return False
    try:
        probe = tempfile.mkdtemp(prefix=".tfdprobust-write-probe-", dir=folder)
    except OSError:
        return False
    try:
        os.rmdir(probe)
    except OSError:
        pass  # created but not removable: writable; the name marks it as a probe
    return True


def new_path(path: str, flag: str, overwrite: bool = False, also: str = "") -> None:
    """``path`` must not exist (unless ``overwrite``) and must be creatable: its nearest
    existing ancestor is a folder we can write in (probed). Nothing is left behind.

    Args:
        also: another flag that changes the path (e.g. ``--run_name``), named in the fix.
    """
    path = os.path.abspath(path)
    other = f" or {also}" if also else ""
    require(overwrite or not os.path.exists(path),
            f"{path} already exists; choose another {flag}{other} (nothing was overwritten)")
    writable_parent(path, flag)


def writable_parent(path: str, flag: str) -> None:
    """``path`` (a file or folder to be created or written) lies under a writable folder."""
    path = os.path.abspath(path)
    target = path if os.path.isdir(path) else os.path.dirname(path)
    existing = nearest_existing(target)
    require(can_write_in(existing),
            f"{flag}: cannot create {path} ({existing} is not a writable folder); choose a writable {flag}")


def writable_dir(path: Optional[str], flag: str) -> None:
    """``path`` is an existing folder we can write in, or can be created (not a file)."""
    if not path:
        return
    require(not os.path.exists(path) or os.path.isdir(path), f"{flag}={path} is a file; give a folder")
    existing = nearest_existing(os.path.abspath(path))
    require(can_write_in(existing),
            f"{flag}={path} cannot be created or written ({existing} is not a writable folder); choose a "
            f"writable {flag}")


def existing_dir(path: Optional[str], flag: str, what: str) -> None:
    """``path`` (if given) is an existing folder; ``what`` says what it should hold."""
    if path:
        require(os.path.isdir(path), f"{flag}={path} is not a folder; point it at {what}")
