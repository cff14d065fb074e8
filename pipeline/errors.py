"""The one base class of every error a user can fix: the CLI prints its message as one line (never a
traceback) and exits with its code."""
from __future__ import annotations


class RlpostError(Exception):
    """A problem with the config, data, model, checkpoint, cluster or run that the user can act on."""

    exit_code = 1
