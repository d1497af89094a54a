"""Errors a user can cause and fix. Their message is one sentence; the stage scripts print it and exit non-zero."""


class UserError(Exception):
    """A problem with the user's input or environment (bad data, missing artifact, unreachable server)."""
