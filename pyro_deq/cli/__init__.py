"""The ``pyro-deq`` command line: ``pyro-deq fit`` for users' own data, ``pyro-deq compare`` for the bundled data sets.

Run ``pyro-deq --help``, or ``python -m pyro_deq.cli --help``. The entry point
is :func:`pyro_deq.cli.main.main`.
"""

__all__ = ["UserInputError"]


class UserInputError(Exception):
    """Raised for input the user can fix: a bad file, option or output directory.

    The message is one line that names the file or option, the position where
    there is one, and the fix. The command line prints it after
    ``pyro-deq: error:`` and exits with status 2.
    """
