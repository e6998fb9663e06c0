"""What planning reports besides the plan: the problem that stops it, and the notes a person should read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bus_schemas.plans import PlanFlag


class PlanProblem(Exception):
    """The input cannot be planned; the message says where and why (it becomes the `failed` detail)."""


@dataclass
class PlanNotes:
    """Log lines for the build stream and flags for the plan, collected while planning."""

    lines: list[tuple[Literal["info", "warning"], str]] = field(default_factory=list)
    flags: list[PlanFlag] = field(default_factory=list)
    model_input_tokens: int = 0
    """Model tokens planning cost (for metering), summed over every request to the model."""
    model_output_tokens: int = 0

    def info(self, message: str) -> None:
        """A line the person watching should read."""
        self.lines.append(("info", message))

    def warn(self, message: str) -> None:
        """A line about something the person should look at."""
        self.lines.append(("warning", message))

    def flag(self, flag: PlanFlag) -> None:
        """Record a flag on the plan."""
        self.flags.append(flag)
