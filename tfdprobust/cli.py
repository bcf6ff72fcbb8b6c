"""What every command-line entry point shares: absl flags, one-line errors, exit status 2.

Each CLI module defines its flags and a ``main(argv) -> int`` and ends with
``cli.run(main)``. Bad input of any kind (an unknown flag, a value absl cannot parse, a
:class:`~tfdprobust.errors.UsageError` raised while validating) prints exactly one line
``error: <what is wrong and how to fix it>`` on stderr and exits with status 2, before any
work starts. absl itself would exit 1 with a usage dump.

Example::

    from tfdprobust import cli
    ...
    if __name__ == "__main__":
        cli.run(main)
"""

import os
import sys
from typing import Callable, List, Sequence

from absl import app, flags

from tfdprobust import compat
from tfdprobust.errors import UsageError

EXIT_USAGE = 2
# TensorFlow's C++ start-up logs three "E ... Unable to register cuDNN factory" lines on
# CPU machines; level 3 keeps stderr to the one line a CLI prints on bad input.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow >= 2.16 prints two lines before that level applies: they go too (compat).
compat.quiet_tensorflow_import()


def fail(message: str) -> None:
    """Prints ``error: message`` (one line) and exits with status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull",
              "--helpxml", "-helpxml")


def parse_flags(argv: Sequence[str]) -> List[str]:
    """absl's parser, but a bad flag is one line and exit 2 instead of a usage dump, and
    ``--help``/``--helpshort`` exit 0 (absl exits 1 after printing the help)."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as err:
        fail(f"{err}; run with --helpshort to list the flags")
    except SystemExit as stop:
        if stop.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    return []  # unreachable


def guarded(main: Callable[[List[str]], int]) -> Callable[[List[str]], int]:
    """Wraps ``main`` so a :class:`UsageError` becomes one line and exit status 2.

    Before ``main`` runs, every float flag (and every number in a list flag) must be
    finite: no CLI has a use for ``inf`` or ``nan``, and they would reach the training or
    the accountant (see :func:`tfdprobust.flagcheck.finite_floats`).
    """

    def wrapper(argv):
        from tfdprobust import flagcheck

        quiet_library_warnings()
        try:
            flagcheck.finite_floats(flags.FLAGS)
            return main(argv)
        except UsageError as err:
            fail(str(err))
        return EXIT_USAGE  # unreachable

    return wrapper


def quiet_library_warnings() -> None:
    """absl warnings of the libraries stay off a CLI's stderr. dp-accounting >= 0.5 warns
    there, dozens of lines per epsilon, when an RDP order's series does not converge; it then
    leaves that order out, which can only raise epsilon (the bound stays valid). What our
    CLIs have to say they print themselves; a refusal stays one line."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)


def run(main: Callable[[List[str]], int]) -> None:
    """``absl.app.run`` with :func:`parse_flags` and :func:`guarded`."""
    app.run(guarded(main), flags_parser=parse_flags)
