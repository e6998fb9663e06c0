"""Structured logs that carry the current trace id: the platform's processes log exactly as runners do, with
one piece of code (`runner_template.logs`)."""

from __future__ import annotations

from runner_template.logs import configure_logging, new_trace_id, trace_id_var

__all__ = ["configure_logging", "new_trace_id", "trace_id_var"]
