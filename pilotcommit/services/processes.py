"""Child processes of the local services: started in their own process group with their output in a
log file, health-checked over HTTP, stopped (with everything they spawned) again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

LOCALHOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service did not start or answer in time; the message names its log file."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET url`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return False


@dataclass
class ManagedProcess:
    """A started service: its process, the URL it answers on (if any) and its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str | None = None
    health_url: str | None = None
    _log_handle: object = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def wait_healthy(self, timeout_s: float) -> None:
        """Block until ``health_url`` answers 200; fail (naming the log) if the process exits
        or the deadline passes."""
        if self.health_url is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"{self.name} exited with code {self.process.returncode} before it answered "
                    f"{self.health_url}; log {self.log_path}:\n{self.log_tail()}"
                )
            if http_ok(self.health_url):
                return
            time.sleep(0.5)
        raise ServiceError(
            f"{self.name} did not answer {self.health_url} within {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the process group, then SIGKILL after ``timeout_s``."""
        if self.running:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        else:
            # The leader is gone; its children (gunicorn/uvicorn workers) may not be.
            _signal_group(self.process, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()  # type: ignore[attr-defined]
            self._log_handle = None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the process leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def start_process(
    name: str,
    args: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    url: str | None = None,
    health_url: str | None = None,
) -> ManagedProcess:
    """Start ``args`` in a new session with stdout/stderr to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
            start_new_session=True,
        )
    except OSError as err:
        handle.close()
        raise ServiceError(f"cannot start {name} ({' '.join(args)}): {err}") from err
    return ManagedProcess(name, process, log_path, url, health_url, handle)


class ServiceStack:
    """Services started together and stopped together (in reverse order); a context manager."""

    def __init__(self) -> None:
        self.services: list[ManagedProcess] = []

    def add(self, service: ManagedProcess) -> ManagedProcess:
        self.services.append(service)
        return service

    def stop(self) -> None:
        """SIGTERM to every service at once, then wait for each (SIGKILL after its timeout):
        the stack stops in about the time of its slowest service, not the sum."""
        services, self.services = list(reversed(self.services)), []
        for service in services:
            if service.running:
                _signal_group(service.process, signal.SIGTERM)
        for service in services:
            service.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
