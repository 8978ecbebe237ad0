"""A real `pinnersage serve` process on a free port, and plain HTTP calls to it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, *args: str, ready: int = 1) -> subprocess.Popen:
    """Serve ``root/serving`` with the event log ``root/events``; returns once ``ready`` distinct
    worker pids have answered /health (or raises with the server's stderr)."""
    env = {**os.environ, "PINNERSAGE_SERVING_ROOT": str(root / "serving"), "PINNERSAGE_EVENTS_ROOT": str(root / "events")}
    server = subprocess.Popen([sys.executable, "-m", "pinnersage_dagster.cli", "serve", "--port", str(port), *args],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    pids: set[int] = set()
    for _ in range(400):
        if server.poll() is not None:
            break
        try:
            health = get_json(port, "/health", timeout=2)
            if health["status"] == "ok":
                pids.add(health["pid"])
                if len(pids) >= ready:
                    return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(server.stderr.read().decode()[-3000:])


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def get_json(port: int, path: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def get_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def post_json(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())
