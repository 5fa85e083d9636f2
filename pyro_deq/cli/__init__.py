"""The ``pyro-deq`` command line: ``pyro-deq fit`` for users' own data, ``pyro-deq compare`` for the bundled data sets.

Run ``pyro-deq --help``, or ``python -m pyro_deq.cli --help``. The entry point
is :func:`pyro_deq.cli.main.main`.
"""

__all__ = ["UserInputError", "reject_foreign_family_options"]


class UserInputError(Exception):
    """Raised for input the user can fix: a bad file, option or output directory.

    The message is one line that names the file or option, the position where
    there is one, and the fix. The command line prints it after
    ``pyro-deq: error:`` and exits with status 2.
    """


def reject_foreign_family_options(name: str, total_count, scale, source: str = "--family") -> None:
    """Raise :class:`UserInputError` for ``--total-count`` or ``--scale`` given to a family without that parameter.

    :param str name: the family in use.
    :param str source: where the family came from, as the message names it.
    """
    if total_count is not None and name != "binomial":
        raise UserInputError(f"--total-count applies only to the binomial family, not {source} {name}; drop it")
    if scale is not None and name != "gaussian":
        raise UserInputError(f"--scale applies only to the gaussian family, not {source} {name}; drop it")
