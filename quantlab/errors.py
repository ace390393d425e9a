"""The one exception type for mistakes a user can fix: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong, where, and what to do."""
