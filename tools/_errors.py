"""The two error types of the data tools: one bad input file, and a run that cannot start or go on."""


class InputError(Exception):
    """A problem with one input file; the message names the file and says how to fix it."""


class ToolError(RuntimeError):
    """A run could not start (bad arguments, unrecognised layout, output inside the input) or stopped
    at bad input with ``on_error="error"``; the message says what to change."""
