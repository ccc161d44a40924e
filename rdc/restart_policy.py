"""When ``rdc up`` restarts a process that exited, and when it gives up on it.

The model is systemd's ``Restart=on-failure``: a process that exits while the
center is not stopping is restarted after a delay that doubles with each failure
in a row (``RestartSec`` with ``RestartSteps``/``RestartMaxDelaySec``), starting
again from the base delay once a run lasted ``stable_after_s``; and a process
that fails ``give_up_failures`` times within ``give_up_window_s`` is given up
(``StartLimitBurst`` within ``StartLimitIntervalSec``).  A clean exit counts as a
failure too: every process of the center is meant to run until it is told to
stop, so an Orthanc stopped from outside is the same case as a crashed one.

Kept free of processes and clocks (the caller passes monotonic times), so the
arithmetic can be checked on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from core.settings import Settings


@dataclass(frozen=True)
class RestartPolicy:
    base_s: float = 1.0
    max_s: float = 30.0
    stable_after_s: float = 60.0
    give_up_failures: int = 5
    give_up_window_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(base_s=settings.supervisor_restart_base_s,
                   max_s=settings.supervisor_restart_max_s,
                   stable_after_s=settings.supervisor_stable_after_s,
                   give_up_failures=settings.supervisor_give_up_failures,
                   give_up_window_s=settings.supervisor_give_up_window_s)

    def describe(self) -> str:
        """One line for logs and the README: what this policy does."""
        return (f"restart after {self.base_s:g} s doubling to {self.max_s:g} s (reset after "
                f"{self.stable_after_s:g} s up); give up after {self.give_up_failures} "
                f"failures within {self.give_up_window_s:g} s")


@dataclass(frozen=True)
class Decision:
    """What to do about one exit."""

    give_up: bool
    #: Seconds to wait before the restart (meaningless when giving up).
    backoff_s: float
    #: Failures in a row, 1 for the first one after a stable run.
    attempt: int
    #: Failures inside the give-up window, this one included.
    failures_in_window: int


@dataclass
class FailureHistory:
    """The failures of one process, as the policy needs them."""

    times: deque[float] = field(default_factory=deque)
    consecutive: int = 0

    def record(self, policy: RestartPolicy, now: float, uptime_s: float) -> Decision:
        """Note an exit at monotonic time ``now`` after ``uptime_s`` of running."""
        if uptime_s >= policy.stable_after_s:
            self.consecutive = 0
        self.consecutive += 1
        self.times.append(now)
        while self.times and now - self.times[0] > policy.give_up_window_s:
            self.times.popleft()
        # The exponent is capped so that a long run of failures cannot overflow a float.
        backoff = min(policy.max_s, policy.base_s * 2.0 ** min(self.consecutive - 1, 60))
        return Decision(give_up=len(self.times) >= policy.give_up_failures, backoff_s=backoff,
                        attempt=self.consecutive, failures_in_window=len(self.times))

    def reset(self) -> None:
        """Forget every failure (an operator re-armed a given-up process)."""
        self.times.clear()
        self.consecutive = 0
