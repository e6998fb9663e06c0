"""The limits a worker applies to itself and its tool processes (set before any generated code runs)."""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerLimits:
    """rlimits of the warden and its tool processes (0: leave the limit as inherited)."""

    memory_bytes: int = 2 * 1024**3
    """Address space of each process (not resident memory: CPython with the SDK maps ~1 GiB of it)."""
    processes: int = 0
    """Processes and threads of this sandbox's user (RLIMIT_NPROC); only meaningful when the sandbox has a
    user of its own."""
    file_size_bytes: int = 1024 * 1024
    open_files: int = 256
    cpu_seconds: int = 600
    """CPU time of one tool process; past it the process is ended and a fresh one forked."""

    def argv(self) -> list[str]:
        """These limits as the worker's command-line flags."""
        return [f"--memory-bytes={self.memory_bytes}", f"--processes={self.processes}",
                f"--file-size-bytes={self.file_size_bytes}", f"--open-files={self.open_files}",
                f"--cpu-seconds={self.cpu_seconds}"]

    def apply(self) -> None:
        """Lower this process's limits (children inherit them)."""
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for which, value in ((resource.RLIMIT_AS, self.memory_bytes), (resource.RLIMIT_NPROC, self.processes),
                             (resource.RLIMIT_FSIZE, self.file_size_bytes), (resource.RLIMIT_NOFILE, self.open_files)):
            if value > 0:
                resource.setrlimit(which, (value, value))

    def limit_cpu(self) -> None:
        """Cap this process's CPU time (a tool process's: it starts from zero at its fork)."""
        if self.cpu_seconds > 0:
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 5))
