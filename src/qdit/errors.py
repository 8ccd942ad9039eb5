"""Errors that the CLI reports as one line (no traceback) with a non-zero exit."""


class QditError(Exception):
    """An expected failure caused by the user's input (bad file, bad option, bad value)."""
