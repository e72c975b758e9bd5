"""Errors shared by every layer. Here, not in llmpack.cli, so that the pure layers (api, advisor,
hardware, planner, render) raise them without importing the command line; `llmpack.cli` re-exports
UserError and prints it."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: printed as one line, exit status 2, no traceback."""
