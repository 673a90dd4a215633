"""A real Label Studio with this service as its ML backend, and a screenshot of its labelling page.

    python -m tools.serve.screenshot_label_studio IMAGE... --config CFG --checkpoint CKPT [--out docs/label_studio.png]

Starts Label Studio (``make label-studio`` installs it in ``.venv-ls``, its own environment; or give its executable
in ``$CLICKPOSE_LABEL_STUDIO``) on 127.0.0.1 with SQLite in a temporary folder, and the service in this process;
creates a project with :func:`tools.label_studio.label_config`, uploads the images, connects the service through
Label Studio's API (``POST /api/ml``), has Label Studio retrieve the predictions and store them, then opens the first
task's labelling page in headless Chromium, waits until the editor shows the stored regions and saves a screenshot.
Everything is removed when it ends (about 2 minutes, most of it Label Studio's first start). The live test
(tests/tools/serve/test_label_studio_live.py) uses the same pieces.

docs/label_studio.png is `make demo`'s model with its quality head on one synthetic image:

    python -m tools.serve.screenshot_label_studio data_synthetic/images/val2017/000000000418.jpg \\
        --config config/demo.cfg.py --checkpoint demo_output/train/checkpoint_quality.pth --threshold 0.2
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import httpx

REPO = Path(__file__).resolve().parents[2]
EXECUTABLE_ENV = "CLICKPOSE_LABEL_STUDIO"
USERNAME, PASSWORD = "clickpose@example.com", "clickpose-live-test"
TOKEN = "clickpose0123456789abcdef0123456789abcdef"  # a legacy API token, set when the user is created
START_TIMEOUT_S = 300.0  # a first start migrates a new SQLite database: ~1.5 min on 2 busy cores
API_TIMEOUT_S = 120.0  # predictions run the model on CPU, inside Label Studio's request


class LabelStudioError(RuntimeError):
    """Label Studio did not start, or refused a request (the message says which, with its answer or log)."""


def find_label_studio(repo: Path = REPO) -> Optional[Path]:
    """The ``label-studio`` executable: ``$CLICKPOSE_LABEL_STUDIO``, else ``.venv-ls/bin/label-studio``."""
    named = os.environ.get(EXECUTABLE_ENV)
    candidate = Path(named) if named else repo / ".venv-ls" / "bin" / "label-studio"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LabelStudio:
    """A running Label Studio: its address, its user's API token and login, its log file."""

    url: str
    token: str
    username: str
    password: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"},
                            timeout=API_TIMEOUT_S)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def label_studio_env(data_dir: Path) -> dict[str, str]:
    """The environment of a local Label Studio that may call an ML backend on 127.0.0.1: this process's, without
    any Label Studio setting it holds (Label Studio reads NAME, LABEL_STUDIO_NAME and HEARTEX_NAME alike)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("LABEL_STUDIO_", "HEARTEX_"))
           and name not in ("DJANGO_DB", "DATABASE_NAME", "HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),  # SQLite database, uploads and secret key in here
        # tokens set at start-up are legacy tokens, which 1.2x refuses unless enabled
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Label Studio refuses ML backends and webhooks on local addresses unless told otherwise (SSRF guards)
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _wait_until_up(studio: LabelStudio, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioError(f"Label Studio exited with status {process.returncode} while starting; its log "
                                   f"ends:\n{studio.log_tail()}")
        try:
            if httpx.get(f"{studio.url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise LabelStudioError(f"Label Studio did not answer {studio.url}/health within {timeout:.0f} s; its log "
                           f"ends:\n{studio.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    """Terminate Label Studio's whole process group (the dev server runs a child), then kill what is left."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_label_studio(executable: Path, data_dir: Path, timeout: float = START_TIMEOUT_S
                         ) -> Iterator[LabelStudio]:
    """Label Studio on 127.0.0.1 (a free port) with a new SQLite database in ``data_dir``, its user and API token
    created at start; stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    studio = LabelStudio(f"http://127.0.0.1:{port}", TOKEN, USERNAME, PASSWORD, data_dir / "label-studio.log")
    command = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
               "--username", USERNAME, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token",
               "--log-level", "WARNING"]
    with studio.log.open("wb") as log:
        process = subprocess.Popen(command, env=label_studio_env(data_dir), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True)
    try:
        _wait_until_up(studio, process, timeout)
        yield studio
    finally:
        _stop(process)


# ---- Label Studio's REST API ----------------------------------------------------------------------------------------
def answer(response: httpx.Response, what: str) -> Any:
    """The JSON of a successful answer; ``LabelStudioError`` naming ``what`` and quoting the answer otherwise."""
    if response.status_code >= 400:
        raise LabelStudioError(f"Label Studio refused to {what}: {response.request.method} {response.request.url} "
                               f"answered {response.status_code}: {response.text[:1000]}")
    return response.json()


def create_project(client: httpx.Client, title: str, label_config: str) -> int:
    return answer(client.post("/api/projects", json={"title": title, "label_config": label_config}),
                  "create the project")["id"]


def import_images(client: httpx.Client, project: int, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Upload image files as tasks (one multipart field each: one field name holds one file); the tasks'
    images are ``/data/upload/...`` addresses, which the service reads from Label Studio with the token."""
    files = [(f"file{i}", (path.name, path.read_bytes(), "image/jpeg")) for i, path in enumerate(paths)]
    imported = answer(client.post(f"/api/projects/{project}/import", files=files), "import the images")
    if imported.get("task_count") != len(paths):
        raise LabelStudioError(f"Label Studio made {imported.get('task_count')} tasks of {len(paths)} images")
    return project_tasks(client, project)


def project_tasks(client: httpx.Client, project: int) -> list[dict[str, Any]]:
    found = answer(client.get("/api/tasks", params={"project": project, "page_size": 1000}), "list the tasks")
    return sorted(found["tasks"], key=lambda task: task["id"])


def connect_backend(client: httpx.Client, project: int, url: str, title: str = "Click-Pose") -> dict[str, Any]:
    """Add the service as the project's interactive ML backend (Label Studio calls its /health and /setup)."""
    backend = answer(client.post("/api/ml", json={"project": project, "url": url, "title": title,
                                                  "is_interactive": True}), "connect the ML backend")
    if backend.get("readable_state") != "Connected":
        raise LabelStudioError(f"Label Studio did not connect the ML backend at {url}: {backend}")
    return backend


def retrieve_predictions(client: httpx.Client, project: int) -> dict[int, list[dict[str, Any]]]:
    """Have Label Studio ask the backend for every task's predictions (the data manager's "Retrieve Predictions"
    action: synchronous without Redis) and return what it stored, per task id."""
    answer(client.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                       json={"selectedItems": {"all": True, "excluded": []}}), "retrieve the predictions")
    stored = answer(client.get("/api/predictions", params={"project": project}), "list the predictions")
    by_task: dict[int, list[dict[str, Any]]] = {}
    for prediction in stored:
        by_task.setdefault(prediction["task"], []).append(prediction)
    return by_task


def interactive_annotating(client: httpx.Client, backend: int, task: int, regions: list[dict[str, Any]]
                           ) -> dict[str, Any]:
    """What the labelling page asks after the user placed a smart region: Label Studio forwards the task and
    ``context`` to the backend's /predict and answers ``{"data": <its first result>}`` (``{"errors"}``: it failed)."""
    reply = answer(client.post(f"/api/ml/{backend}/interactive-annotating",
                               json={"task": task, "context": {"result": regions}}), "forward the interactive request")
    if "data" not in reply:
        raise LabelStudioError(f"Label Studio's interactive request failed: {reply.get('errors', reply)}")
    return reply["data"]


# ---- the labelling page ---------------------------------------------------------------------------------------------
EDITOR_REGIONS = """
const store = window.Htx && window.Htx.annotationStore, annotation = store && store.selected;
if (!annotation || !annotation.regions.length) return null;
return annotation.regions.map(r => ({type: r.type, x: r.x, y: r.y,
                                     label: r.labeling ? r.labeling.selectedLabels.map(l => l.value)[0] : null}));
"""


def _wait(driver: Any, script: str, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.25)
    raise LabelStudioError(f"waited {timeout:.0f} s for {what} on {driver.current_url}")


def labelling_page(studio: LabelStudio, project: int, task: int, out: Optional[Path], browser: str,
                   driver_path: str, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Log in, open the task's labelling page, wait until the editor holds the task's (predicted) regions and its
    image has loaded, save a screenshot to ``out``; returns the editor's regions (type, x/y in percent, label)."""
    from selenium.webdriver.common.by import By

    from tools.annotate.browser_check import start_browser

    driver = start_browser(browser, driver_path, 1400, 1300)
    try:
        driver.get(f"{studio.url}/user/login/")
        driver.find_element(By.NAME, "email").send_keys(studio.username)
        driver.find_element(By.NAME, "password").send_keys(studio.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        _wait(driver, "return !location.pathname.startsWith('/user/login')", timeout, "the login")
        driver.get(f"{studio.url}/projects/{project}/data?task={task}")
        regions = _wait(driver, EDITOR_REGIONS, timeout, "the editor's regions")
        _wait(driver, "return [...document.querySelectorAll('.lsf-image img, img')].some(i => i.complete && "
                      "i.naturalWidth > 0 && i.src.includes('/data/upload/'))", timeout, "the task's image")
        time.sleep(1.5)  # the canvas draws the regions in the frames after the image loads
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        return regions
    finally:
        driver.quit()


# ---- the command line -----------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.serve.screenshot_label_studio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="images to import (the first one is shown)")
    parser.add_argument("--config", required=True, help="the model's config (.cfg.py)")
    parser.add_argument("--checkpoint", required=True, help="the model's weights (.pth)")
    parser.add_argument("--threshold", type=float, default=0.3, help="person score threshold of the service")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "label_studio.png", help="the screenshot")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from models.predictor import Predictor
    from tools.annotate.browser_check import find_chromium, serve
    from tools.label_studio import label_config
    from tools.serve.app import ServeSettings, create_app

    executable, chromium = find_label_studio(), find_chromium()
    if executable is None or chromium is None:
        print("error: needs Label Studio (`make label-studio`, or $CLICKPOSE_LABEL_STUDIO) and Chromium with "
              "chromedriver (`make browser`)", file=sys.stderr)
        return 2
    predictor = Predictor(args.config, args.checkpoint)
    try:
        with tempfile.TemporaryDirectory(prefix="label-studio-") as data, \
                running_label_studio(executable, Path(data)) as studio, studio.client() as client:
            settings = ServeSettings(threshold=args.threshold, label_studio_url=studio.url,
                                     label_studio_api_key=studio.token)
            with serve(create_app(predictor, settings)) as url:
                project = create_project(client, "Click-Pose", label_config(list(predictor.metadata.keypoint_names)))
                tasks = import_images(client, project, args.images)
                connect_backend(client, project, url.rstrip("/"))
                stored = retrieve_predictions(client, project)
                regions = labelling_page(studio, project, tasks[0]["id"], args.out, *chromium)
        print(f"{args.out}: task {tasks[0]['id']} with {len(regions)} regions "
              f"({sum(len(p[0]['result']) for p in stored.values())} stored over {len(tasks)} tasks)")
    except LabelStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        predictor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
