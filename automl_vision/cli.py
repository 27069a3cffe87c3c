"""The ``automl-vision`` command: one group of sub-commands.

Each sub-command lives in ``automl_vision/commands/<name>.py`` with two functions:
``add_parser(subparsers)`` (argparse only: importing it must stay cheap, so that
``--help`` is fast) and ``run(args) -> int``. Usage errors print one clear line to
stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

# when this process started, as near as Python lets us see it: the command's own imports (torch, timm,
# Optuna: 9-16 s on a cold 2-core machine) are part of the wall time a user gives to --time-budget
STARTED = time.time()

from automl_vision import __version__  # noqa: E402

COMMANDS = ("search", "worker", "ensemble", "predict", "export", "leaderboard", "dashboard", "plugins", "space")


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: what is wrong, a close match when
    there is one, and the ``--help`` to read (argparse prints its whole usage block first,
    and Python 3.11's has no "did you mean")."""

    def error(self, message: str):  # type: ignore[override]
        import difflib
        import re

        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = re.findall(r"'([^']*)'", bad.group(2))
            close = difflib.get_close_matches(bad.group(1), choices, n=1, cutoff=0.6)
            message = message[: bad.start()] + f"invalid choice: {bad.group(1)!r}" + (
                f" (did you mean {close[0]!r}?)" if close else f" (choose from {', '.join(choices)})")
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")

    def unknown_options(self, extras: list[str]):
        """Refuse arguments no option took, suggesting the closest option of this command."""
        import difflib

        known = [o for action in self._actions for o in action.option_strings]
        parts = []
        for extra in extras:
            close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1, cutoff=0.6) if extra.startswith("-") else []
            parts.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
        self.error(f"unrecognized arguments: {' '.join(parts)}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="automl-vision",
        description="AutoML model selection for image classification: an Optuna search over timm backbones "
        "and custom CNNs, augmentation and training hyperparameters, with real PyTorch training.",
        epilog="Run 'automl-vision COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"automl-vision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"automl_vision.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"automl_vision.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from automl_vision.search.interrupts import Terminated, check_interrupt, watch_interrupts

    # installed before any heavy import: a Ctrl-C landing inside a library's import (or anywhere
    # that swallows it) is noted, and a command that then runs on to the end still exits 130
    try:
        with watch_interrupts():
            try:
                # called in-process with arguments (the tests, a script): the clock starts now
                code = _dispatch(argv, STARTED if argv is None else time.time())
            except Exception:
                # a Ctrl-C landing inside a library's clean-up can surface as another error (Optuna's
                # journal lock then raises FileNotFoundError): the interrupt is what the user did
                check_interrupt()
                raise
            check_interrupt()
            return code
    except Terminated:
        print("\nterminated (SIGTERM); finished work is kept in the run directory.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C); finished work is kept in the run directory.", file=sys.stderr)
        return 130


def _dispatch(argv: list[str] | None, started: float) -> int:
    from automl_vision.types import UsageError

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    args.started = started  # the time a command's budget counts from (search --time-budget)
    if extras:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        # sub-commands are parsed with parse_known_args: the command whose option was misspelt answers
        commands.get(getattr(args, "command", None) or "", parser).unknown_options(extras)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "verbose", False):
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"automl-vision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # full disk, quota, file size limit
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(
            f"automl-vision {args.command}: error: the disk is full{where} ({exc.strerror}). Every file already "
            "written is complete (files are replaced atomically) and finished trials are kept. Free some space, or "
            "pass --out on a larger disk, then run the same command again to resume.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
