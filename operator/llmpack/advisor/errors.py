"""Errors the advisor raises for problems a user can fix (bad profile, impossible SLO, a model too
large for the GPU). The message says what is wrong and what to change; callers show it as is."""

from __future__ import annotations


class AdvisorError(ValueError):
    """The advisor cannot recommend anything for this input; the message says what to change."""


class UnknownModelError(AdvisorError):
    """A model name the architecture catalogue (or the paper data) does not know."""


class PaperDataError(AdvisorError):
    """The paper's measurements cannot be found or do not hold what was asked for."""
