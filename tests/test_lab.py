"""`./reproduce.sh lab`: JupyterLab at notebooks/ with the project's kernel, started headless.

The command installs jupyterlab on first use (`setup_lab` in reproduce.sh; `./reproduce.sh test`
runs it before the network is blocked), so this test goes through the command itself rather
than a copy of its install steps. Only loopback is used.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
KERNEL = "irm-companion"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, token: str) -> dict:
    # No proxy: a proxy from the environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with opener.open(request, timeout=5) as response:
        return json.loads(response.read())


def wait_for_api(url: str, token: str, server: subprocess.Popen, log: Path) -> dict:
    """Poll `url` until the server answers; fail with the server's output if it exits or hangs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"./reproduce.sh lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return get_json(url, token)
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.mark.lab
def test_reproduce_lab_serves_notebooks_with_the_project_kernel(tmp_path):
    port, token = free_port(), "irm-test-token"
    base = f"http://127.0.0.1:{port}/api"
    # This test's environment is the one the command uses; Jupyter's runtime and config files
    # go to tmp_path, not the user's home.
    env = {**os.environ, "IRM_VENV": sys.prefix, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    args = ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={token}"]
    if os.geteuid() == 0:
        args.append("--allow-root")  # CI containers run as root; Jupyter refuses root unless told
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(ROOT / "reproduce.sh"), "lab", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        api = wait_for_api(base, token, server, log)
        assert api.get("version"), api
        specs = get_json(f"{base}/kernelspecs", token)["kernelspecs"]
        assert KERNEL in specs, f"kernel '{KERNEL}' not registered; found {sorted(specs)}"
        python = specs[KERNEL]["spec"]["argv"][0]
        assert Path(python).resolve() == Path(sys.executable).resolve(), "the kernel runs the project's environment"
        contents = get_json(f"{base}/contents", token)["content"]
        assert "01_data.ipynb" in {item["name"] for item in contents}, "the server's root is notebooks/"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
