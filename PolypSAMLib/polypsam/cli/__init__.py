"""Command line ``polypsam``: one module per command family in this package.

Every module here except :mod:`options` defines ``register(subparsers)``; :func:`build_parser`
finds them (``segment`` and ``sequences`` first, then by name), so adding a command is adding a
module. Modules import heavy packages (torch, dask...) inside their handlers, not at the top.

Every user error ends as one readable line on stderr and a non-zero exit status; no traceback.
Engines a handler opens (:func:`options.engine_from_args`) are closed however it ends: success,
error or Ctrl-C; for a ``--server`` run that deletes its server session.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
from typing import Sequence

from .. import __version__
from ..errors import CancelledError, PolypSAMError
from .options import EXIT_INTERRUPTED, EXIT_USAGE

_FIRST = ("segment", "sequences")


def command_modules() -> list[str]:
    """Names of the command modules of this package, in help order."""
    found = {m.name for m in pkgutil.iter_modules(__path__)} - {"options", "__main__"}
    return [n for n in _FIRST if n in found] + sorted(found - set(_FIRST))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polypsam",
        description="Box-prompted SAM2 segmentation of frames, volumes and sequences.")
    parser.add_argument("--version", action="version", version=f"polypsam {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in command_modules():
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # engines opened by the handler are closed on every exit (a server session is deleted)
        with contextlib.ExitStack() as args.resources:
            return int(args.handler(args) or 0)
    except CancelledError as exc:
        print(f"polypsam: stopped: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("polypsam: interrupted; nothing more was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PolypSAMError as exc:
        print(f"polypsam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"polypsam: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_USAGE
