"""The one error type a user sees: the CLI prints its message on one line and exits non-zero."""


class ChatsmithError(Exception):
    """A problem with the user's input or files, explained in one line."""
