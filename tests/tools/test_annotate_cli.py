"""The tool as a user runs it: a server process that is killed (SIGKILL) after an edit loses nothing, and a
restart on the same file resumes at the same image with the same people."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the annotation tool needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("uvicorn", reason="the annotation tool needs uvicorn (pip install -r requirements.txt)")

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def start(images: Path, config: Path, checkpoint: Path, annotations: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tools.annotate", str(images), "--config", str(config),
                             "--checkpoint", str(checkpoint), "--annotations", str(annotations), "--port", "0",
                             "--threshold", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if line.startswith("open http://127.0.0.1:"):
            return proc, line.split()[1]
    proc.kill()
    raise AssertionError("the tool did not print its URL:\n" + "".join(lines))


def post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_killed_server_loses_nothing_and_restart_resumes(annotate_assets, tmp_path):
    config = tmp_path / "small.cfg.py"
    config.write_text(f"_base_ = ['{ANNOTATE_CONFIG}']\n" + "".join(f"{k} = {v}\n" for k, v in ANNOTATE_OPTIONS.items()))
    annotations = tmp_path / "ann.json"
    proc, url = start(annotate_assets["images"], config, annotate_assets["checkpoint"], annotations)
    try:
        assert url.startswith("http://127.0.0.1:")
        state = post(url, "/api/open", {"image": "b.jpg"})
        index = state["people"][0]["index"]
        post(url, "/api/refine", {"image": "b.jpg", "clicks": [{"person": index, "keypoint": 7, "x": 33.0, "y": 44.0}]})
        post(url, "/api/visibility", {"image": "b.jpg", "person": index, "keypoint": 7, "visibility": 1})
    finally:
        proc.kill()  # no shutdown code runs
        proc.wait(30)
    proc, url = start(annotate_assets["images"], config, annotate_assets["checkpoint"], annotations)
    try:
        with urllib.request.urlopen(url + "api/images", timeout=60) as response:
            assert json.loads(response.read())["current"] == "b.jpg"
        person = next(p for p in post(url, "/api/open", {"image": "b.jpg"})["people"] if p["index"] == index)
        np.testing.assert_allclose(person["keypoints"][7][:2], [33.0, 44.0], atol=1e-3)
        assert person["pinned"][7] and person["visibility"][7] == 1
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_listening_socket_and_its_connections_send_without_nagle_delay():
    """uvicorn writes a response's head and body separately; with Nagle's algorithm on, the body waits for the
    client's delayed ACK (about 40 ms on Linux) on every request."""
    import socket

    from tools.annotate.cli import bind

    server = bind(0)
    try:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            accepted.close()
            client.close()
    finally:
        server.close()
