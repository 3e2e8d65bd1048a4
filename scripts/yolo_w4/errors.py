"""The one exception type for bad input that the user can fix."""


class UserError(Exception):
    """A problem with the user's input: shown as one line (what, which file, how to fix), exit 2."""
