"""Errors a user can cause and fix, and how any error becomes one short sentence.

A :class:`UserError`'s message is one sentence; the stage scripts print it and exit non-zero.
"""


class UserError(Exception):
    """A problem with the user's input or environment (bad data, missing artifact, unreachable server)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name when the message is empty), at most ``limit`` characters."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]
