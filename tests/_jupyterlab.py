"""A throwaway JupyterLab server for browser tests: 127.0.0.1, a token, temporary root/config/runtime dirs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the server's root folder (the kernels' working directory)
    log: Path

    def wait_for_kernel(self, timeout: float = 120) -> dict:
        """Wait until the page's kernel is connected and idle (the status bar says Idle before that)."""
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(f"{self.url}/api/kernels?token={self.token}", timeout=5) as resp:
                kernels = json.loads(resp.read())
            ready = [k for k in kernels if k.get("connections", 0) >= 1 and k.get("execution_state") == "idle"]
            if ready:
                return ready[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no connected idle kernel after {timeout:.0f} s: {kernels}")
            time.sleep(0.3)

    def notebook_url(self, name: str) -> str:
        # ?reset: a clean workspace (no layout restored from an earlier run)
        return f"{self.url}/lab/tree/{name}?reset&token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(tmp: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[Lab]:
    """Start JupyterLab with everything under ``tmp``; stop it (and its kernels) on exit."""
    root, jupyter_path = tmp / "root", tmp / "jupyter-path"
    settings = tmp / "lab-settings" / "@jupyterlab" / "apputils-extension"
    for folder in (root, settings, tmp / "workspaces", jupyter_path / "kernels" / "python3"):
        folder.mkdir(parents=True, exist_ok=True)
    # no news or update toast over the notebook (they would also try to reach the network)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # the kernel is this interpreter, whatever kernelspec the machine has (JUPYTER_PATH comes first)
    (jupyter_path / "kernels" / "python3" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python",
    }))  # fmt: skip
    token, port = secrets.token_hex(16), _free_port()
    full_env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTER_PATH": str(jupyter_path),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_path = tmp / "jupyterlab.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         f"--LabApp.user_settings_dir={tmp / 'lab-settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
        cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killpg takes its kernels down too
    )  # fmt: skip
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterlab exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{lab.url}/api/status?token={token}", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyterlab did not answer in {timeout:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield lab
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
