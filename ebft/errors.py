"""Errors a user can cause.

Every mistake a user can make (a misspelt config key, a missing file, an unknown model name, a hub model
with no hub) is raised as a :class:`UserError` whose message is one sentence naming the problem and the
fix. The CLI prints that sentence and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """A problem in the user's input, reported as one sentence."""


class ConfigError(UserError, ValueError):
    """A bad configuration value or key."""
