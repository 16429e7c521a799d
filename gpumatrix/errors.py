"""The two ways a run ends badly: bad input (exit 2) and failed work (exit 1)."""


class UsageError(Exception):
    """Bad input: a matrix, a filter, an argument. Each line of the message names what was wrong. Exit code 2."""

    exit_code = 2


class WorkFailed(Exception):
    """A build, lock, test or push that ran and failed. Exit code 1."""

    exit_code = 1
