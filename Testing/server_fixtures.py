"""A real ``polypsam serve`` process on 127.0.0.1 for the server tests (random-weight tiny model)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
STARTUP_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The test process's environment, with its torch thread count: parity tests compare scores
    exactly, and a different thread count changes float reduction order (1e-7 differences)."""
    import torch

    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(torch.get_num_threads())
    lib = str(REPO / "PolypSAMLib")
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ServerProcess:
    """``polypsam serve`` in a subprocess; ``stop()`` kills it (SIGKILL with ``kill=True``)."""

    def __init__(self, checkpoint: Path, port: int | None = None, token: str = "",
                 extra: tuple[str, ...] = (), log: Path | None = None) -> None:
        self.port = port or free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "polypsam.cli", "serve", "--port", str(self.port),
               "--checkpoint", str(checkpoint), "--config", TINY_CONFIG, "--device", "cpu",
               "--image-size", "256", *extra]
        env = child_env()
        env.pop("POLYPSAM_TOKEN", None)
        if token:  # as documented: in the environment, not on the command line
            env["POLYPSAM_TOKEN"] = token
        self.log = log
        self._log = open(log or os.devnull, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=self._log)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"polypsam serve exited with {self.proc.returncode}")
            try:
                if self.health()["status"] == "ok":
                    return
            except OSError:
                time.sleep(0.3)
        self.stop(kill=True)
        raise RuntimeError("polypsam serve did not start in time")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, token: str | None = None,
                timeout: float = 60.0) -> tuple[int, dict]:
        """One raw HTTP request; returns ``(status, JSON body)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            tok = self.token if token is None else token
            if tok:
                hdrs["Authorization"] = f"Bearer {tok}"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, (json.loads(data) if data else {})
        finally:
            conn.close()

    def post_json(self, path: str, payload, **kw) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(payload).encode(),
                            {"Content-Type": "application/json"}, **kw)

    def health(self) -> dict:
        return self.request("GET", "/v1/health", timeout=5.0)[1]

    def log_text(self) -> str:
        """What the server printed so far (stdout and stderr; empty without a log file)."""
        self._log.flush()
        return self.log.read_text() if self.log is not None else ""

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def wait_idle(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h["jobs_active"] == 0:
                return h
            time.sleep(0.05)
        raise AssertionError(f"server still busy after {timeout} s: {self.health()}")

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
