"""Entry point of the ``pyro-deq`` command: argument parsing, logging, warnings and exit status.

Exit status: 0 on success, 1 when the computation fails (for example a
non-finite loss), 2 for input the user can fix (bad options, files or output
directory), 130 when interrupted. Errors are one line on stderr starting with
``pyro-deq: error:``, without a traceback.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import warnings

from pyro_deq.errors import NumericalError

from . import UserInputError
from . import compare as compare_command
from . import fit as fit_command

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

PROGRAM = "pyro-deq"
USAGE_ERROR = 2
FAILURE = 1
INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """Raise :class:`UserInputError` instead of printing usage and exiting."""

    def error(self, message):
        raise UserInputError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with the ``fit`` and ``compare`` subcommands."""
    parser = _Parser(
        prog=PROGRAM,
        description="Deep equilibrium guides for exponential-family PCA in Pyro.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    fit_command.add_parser(subparsers)
    compare_command.add_parser(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Write log records as ``pyro-deq: warning: ...`` to the current ``sys.stderr``."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        # The handler always writes to whatever sys.stderr is at emit time.
        pass

    def format(self, record):
        return f"{PROGRAM}: {record.levelname.lower()}: {super().format(record)}"


class _WarningLog:
    """Log each distinct Python warning once, and count the repeats."""

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        key = (category.__name__, str(message))
        self.counts[key] += 1
        if self.counts[key] == 1:
            logger.warning("%s: %s", category.__name__, message)

    def report_repeats(self):
        for (category, message), count in self.counts.items():
            if count > 1:
                logger.warning("%s repeated %d times: %s", category, count, message)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _run(args) -> int:
    """Run the chosen subcommand and map its exceptions to exit statuses."""
    try:
        return args.run(args)
    except UserInputError as error:
        print(f"{PROGRAM}: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    except (NumericalError, ImportError, RuntimeError) as error:
        print(f"{PROGRAM}: error: {_one_line(error)}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print(f"{PROGRAM}: error: interrupted; nothing was written", file=sys.stderr)
        return INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyro-deq`` command line.

    :param argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.
    :returns: the exit status: 0 success, 1 failed computation, 2 bad input, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserInputError as error:
        print(f"{PROGRAM}: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exit_request:  # --help
        return exit_request.code or 0
    if args.command is None:
        print(f"{PROGRAM}: error: choose a command, fit or compare (see {PROGRAM} --help)", file=sys.stderr)
        return USAGE_ERROR

    package_logger = logging.getLogger("pyro_deq")
    previous_level = package_logger.level
    handler = _StderrHandler()
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    warning_log = _WarningLog()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = warning_log
            status = _run(args)
        warning_log.report_repeats()
        return status
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
