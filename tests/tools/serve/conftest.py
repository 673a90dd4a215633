"""Fixtures of the service tests: the tiny model of tests/tools/conftest.py behind the service, a client, images."""
from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install -r requirements.txt)")

from fastapi.testclient import TestClient  # noqa: E402

from tools.serve.app import ServeSettings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1:9090"  # a Host the guard accepts (TestClient's default, testserver, is refused)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The machine is shared: torch on one thread, for these modules only (a session-wide setting outlived them and
    changed the arithmetic of later tests that compare against another process's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_client(annotate_predictor, annotate_assets) -> Callable[..., TestClient]:
    """``make_client(**settings)``: a TestClient of a fresh service (threshold 0 and --allowed-root = the image
    folder unless given)."""
    def make(**changes: Any) -> TestClient:
        settings = replace(ServeSettings(threshold=0.0, allowed_root=annotate_assets["images"]), **changes)
        return TestClient(create_app(annotate_predictor, settings), base_url=LOCAL, raise_server_exceptions=False)
    return make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def image_paths(annotate_assets) -> dict[str, Path]:
    images = annotate_assets["images"]
    return {"a": images / "a.jpg", "b": images / "b.jpg", "c": images / "sub" / "c.jpg"}


def as_data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode()


@pytest.fixture(scope="session")
def data_uri() -> Callable[[Path], str]:
    """``data_uri(path)``: the file as a data URI."""
    return as_data_uri
