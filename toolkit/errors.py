"""The one error type the CLI turns into a one-line message (ground floor, imports nothing)."""


class ToolkitError(ValueError):
    """A problem with the user's input or files; the message names it and the fix."""
