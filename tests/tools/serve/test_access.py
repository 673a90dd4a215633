"""Who may use the service: the token in each client's form, the Host check on the loopback, body limits, and the
refusal to listen beyond the loopback without a token."""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from tools.serve.__main__ import check_host, main

REPO = Path(__file__).resolve().parents[3]


def test_every_request_needs_the_token_when_one_is_set(make_client, data_uri, image_paths):
    client = make_client(token="s3cret")
    for path in ("/health", "/", "/v1/models"):
        answer = client.get(path)
        assert answer.status_code == 401, path
    assert "token" in client.post("/predict", json={"tasks": []}).json()["detail"]
    wrong = client.get("/v1/models", headers={"Token": "guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "UNAUTHORIZED"
    assert client.get("/health", headers={"Authorization": "Token guess"}).status_code == 401
    assert client.get("/health", headers={"Authorization": "Token s3cret"}).json()["status"] == "UP"
    assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    basic = base64.b64encode(b"label-studio:s3cret").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/v1/models", headers={"Token": "s3cret"}).json()["success"] is True
    answer = client.post("/v1/predict", headers={"Token": "s3cret"},
                         json={"model": "clickpose", "image": data_uri(image_paths["a"]), "params": {}})
    assert answer.status_code == 200 and answer.json()["data"]["shapes"]


def test_the_loopback_service_checks_host_content_type_and_size(make_client):
    client = make_client()
    rebound = client.get("/health", headers={"Host": "evil.example"})
    assert rebound.status_code == 421 and "evil.example" in rebound.json()["detail"]
    plain = client.post("/predict", content=b"tasks", headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    small = make_client(max_image_bytes=1000)
    big = small.post("/v1/predict", json={"model": "clickpose", "image": "A" * 2_000_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # listening beyond the loopback (with a token), any Host name is accepted: the token keeps others out
    open_host = make_client(token="t", allowed_hosts=None)
    assert open_host.get("/health", headers={"Host": "gpu-box.lan:9090", "Token": "t"}).status_code == 200


def test_a_non_local_host_without_a_token_refuses_to_start(capsys, monkeypatch):
    monkeypatch.delenv("CLICKPOSE_SERVE_TOKEN", raising=False)
    assert check_host("127.0.0.1", None) is None and check_host("localhost", None) is None
    assert check_host("0.0.0.0", "t") is None
    code = main(["--config", "config/demo.cfg.py", "--checkpoint", "none.pth", "--host", "0.0.0.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--token" in err[0]


@pytest.mark.slow
def test_the_command_refuses_in_a_fresh_process(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tools.serve", "--config", "config/demo.cfg.py", "--checkpoint",
                           "none.pth", "--host", "192.0.2.1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
