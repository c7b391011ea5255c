"""The one exception type for mistakes a user can fix (bad path, bad value, bad file)."""


class UserError(Exception):
    """Reported by the CLI as one line on stderr with exit code 2, without a traceback."""
