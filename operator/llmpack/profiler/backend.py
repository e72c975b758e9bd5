"""What every profiling backend provides: start, measure one batch size, stop, and build the
Profile from the points measured. The sweep (sweep.py) decides which batch sizes; the backend
only knows how to measure one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

from llmpack.api.profile import Profile, ProfilePoint
from llmpack.profiler.sweep import PointFailed

__all__ = ["Backend", "BackendError", "PointFailed"]


class BackendError(Exception):
    """The backend cannot measure at all (the engine did not start, the data is missing); the
    message is the reason the profiling Job reports."""


class Backend(ABC):
    name: str = ""

    def default_candidates(self) -> list[int] | None:
        """Batch sizes to measure when the command line names none; None: the operator's defaults."""
        return None

    def start(self) -> None:  # noqa: B027 (optional hook)
        """Bring the engine up; raise BackendError when it cannot."""

    def stop(self) -> None:  # noqa: B027 (optional hook)
        """Release what start() took. Called once, also after a failure."""

    @abstractmethod
    def measure(self, batch: int) -> ProfilePoint:
        """Measure one batch size (closed loop at `batch` concurrent requests). Raise PointFailed
        when this point cannot be measured but others may; BackendError when none can."""

    @abstractmethod
    def profile(self, points: list[ProfilePoint], notes: list[str]) -> Profile:
        """The Profile of the points measured (at least one), with the run's facts."""

    def __enter__(self) -> Backend:
        try:
            self.start()
        except BaseException:
            self.stop()  # what start() got before it failed (an NVML handle, a server process)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
