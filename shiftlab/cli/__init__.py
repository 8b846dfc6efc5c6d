"""The ``shiftlab`` command line.

Each command lives in its own module ``shiftlab/cli/<name>.py`` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import only the standard
library at top level, so ``shiftlab --help`` is fast; heavy imports happen inside ``run``.
The parser is built when ``main`` runs, never at import time.

Bad input (any :class:`~shiftlab.errors.ShiftlabError`) prints ``shiftlab: error: <message>`` on
stderr and exits with code 2, without a traceback; so does ``shiftlab`` without a command (after the usage).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["main", "build_parser"]

# In the order they are listed by --help: the pipeline order.
COMMANDS = ("demo", "audit", "inspect", "fix", "finetune", "experiment", "report")


def _command_modules():
    for name in COMMANDS:
        yield name, importlib.import_module(f"shiftlab.cli.{name}")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``shiftlab: error: ...``, exit code 2); --help has the usage."""

    def error(self, message: str):
        self.exit(2, f"shiftlab: error: {self.prog.removeprefix('shiftlab ')}: {message} (see --help)\n"
                  if self.prog != "shiftlab" else f"shiftlab: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from shiftlab._version import __version__

    parser = _Parser(
        prog="shiftlab",
        description="Measure, see and fix how convolutional networks respond to translation.",
    )
    parser.add_argument("--version", action="version", version=f"shiftlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shiftlab._runtime import tune_allocator

    tune_allocator()  # before torch allocates anything (see shiftlab._runtime)
    from shiftlab.errors import ShiftlabError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (exit code 2)
        return int(exc.code or 0)
    if getattr(args, "_run", None) is None:  # bare `shiftlab`: a usage error, as argparse's own (exit code 2)
        parser.print_usage(sys.stderr)
        print(f"shiftlab: error: name a command: {', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except ShiftlabError as exc:
        from shiftlab.errors import printable

        print(f"shiftlab: error: {printable(exc)}", file=sys.stderr)  # a file name's control characters escaped
        return 2
    except BrokenPipeError:  # e.g. `shiftlab audit ... | head`
        sys.stdout = open(os.devnull, "w")
        return 141
    except KeyboardInterrupt:
        print("shiftlab: interrupted", file=sys.stderr)
        return 130
    finally:
        from shiftlab._io import release_claims

        release_claims()  # the output paths this command claimed at its start (see shiftlab._io)
