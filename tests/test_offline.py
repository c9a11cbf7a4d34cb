"""The offline guarantee: tests and the notebook kernels they start cannot reach the network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

GUARD = Path(__file__).parent / "netguard"
CONNECT = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"  # TEST-NET-1: never routed


def test_the_test_process_cannot_connect_out():
    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_child_processes_of_the_test_command_cannot_connect_out():
    env = {**os.environ, "PYTHONPATH": str(GUARD), "IRM_BLOCK_NETWORK": "1"}
    result = subprocess.run([sys.executable, "-c", CONNECT], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "network access attempted" in result.stderr


def test_loopback_stays_open_for_kernels():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_the_test_command_installs_the_guard_for_every_process():
    script = (Path(__file__).parent.parent / "reproduce.sh").read_text()
    test_branch = script[script.index("    test)"):script.index(";;")]
    assert "IRM_BLOCK_NETWORK=1" in test_branch and "tests/netguard" in test_branch


def test_embedded_profiles_run_with_the_hub_offline(monkeypatch, tmp_path):
    from irmlib import pipeline

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    pipeline.main(["--profile", "smoke"])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
