"""Errors users can act on. The CLI maps them to one clear sentence and an exit code."""


class StropError(Exception):
    """Bad input or config (exit code 2): the message names the file, line or key at fault."""

    exit_code = 2


class StropRuntimeError(Exception):
    """A failure while running (exit code 1), e.g. a NaN loss under the 'stop' policy."""

    exit_code = 1
