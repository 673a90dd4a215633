"""What the service's HTTP doors cost over the in-process Predictor, and how it holds under concurrent clients.

    python -m tools.benchmark_serve --config config/demo.cfg.py --checkpoint demo_output/train/checkpoint.pth \\
        --image data_synthetic/images/val2017/000000000418.jpg

In one run, on one image, served by ``tools.serve`` on 127.0.0.1 (uvicorn in this process, httpx clients):

- **predict**: the in-process ``Predictor.prediction`` vs a first prediction through each door (Label Studio's
  ``/predict`` with the image by path under ``--allowed-root``; X-AnyLabeling's ``/v1/predict`` with the image as a
  data URI) of the same file. Each run sends the image as a new JPEG (same pixels, another comment), so the
  service's cache, keyed by the image's bytes, cannot answer it; in process, ``prediction`` reads the file too.
- **refine**: one click on one keypoint, in process (``PoseSession.refine``) vs through each door (Label Studio's
  interactive ``/predict`` with the placed keypoint in ``params.context``; X-AnyLabeling's ``/v1/predict`` with one
  point mark). The image is cached by then; a door's time includes reading or decoding the image it is sent, the
  JSON and the HTTP round trip.
- **load**: ``--clients`` threads, each with its own connection, send ``--requests`` requests each, mixed: a Label
  Studio prediction, a Label Studio click on its own task, an X-AnyLabeling prediction with one mark. It counts
  answers by status class and reports p50 / p95 latency.

Times are medians of ``--runs``; the overhead of a door is its median minus the in-process median.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np


def jpeg_variant(image: Any, tag: int) -> bytes:
    """The image as a JPEG (quality 95) whose bytes differ by ``tag`` in a comment, not in the pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, comment=f"variant {tag}".encode())
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - started)


def checked(response: Any) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url.path} answered {response.status_code}: {response.text[:300]}")
    return response.json()


class Doors:
    """Requests of the two doors for one image (``names``: the model's keypoint names, ``size``: the image's)."""

    def __init__(self, client: Any, names: Sequence[str], size: tuple[int, int]):
        from tools.label_studio import label_config

        self.client, self.names, self.size = client, list(names), size
        self.config = label_config(self.names)  # smart keypoints: Label Studio sends the clicks

    def ls_predict(self, path: Path, task: int) -> Any:
        return self.client.post("/predict", json={"tasks": [{"id": task, "data": {"image": str(path)}}],
                                                  "label_config": self.config, "params": {"context": None}})

    def ls_click(self, path: Path, task: int, keypoint: int, x: float, y: float, region: str) -> Any:
        width, height = self.size
        placed = {"id": region, "type": "keypointlabels", "from_name": "kp", "to_name": "image",
                  "original_width": width, "original_height": height, "is_positive": 1,
                  "value": {"x": 100 * x / width, "y": 100 * y / height, "width": 0.4,
                            "keypointlabels": [self.names[keypoint]]}}
        return self.client.post("/predict", json={"tasks": [{"id": task, "data": {"image": str(path)}}],
                                                  "label_config": self.config,
                                                  "params": {"context": {"result": [placed]}}})

    def xal_predict(self, uri: str, marks: Sequence[tuple[float, float]] = ()) -> Any:
        return self.client.post("/v1/predict", json={
            "model": "clickpose", "image": uri,
            "params": {"conf_threshold": 0.0, "marks": [{"type": "point", "data": [x, y], "label": 1}
                                                        for x, y in marks]}})


def click_targets(people: list[dict[str, Any]], size: tuple[int, int], count: int
                  ) -> list[tuple[int, int, float, float]]:
    """``count`` clicks (person index, keypoint, x, y) on the best person: keypoint 0 moved by a few pixels, a
    different offset each time, so every click is a new one."""
    person = people[0]
    x, y = person["keypoints"][0][:2]
    return [(person["index"], 0, float(np.clip(x + 3 + i % 5, 1, size[0] - 1)),
             float(np.clip(y + 2 + i % 3, 1, size[1] - 1))) for i in range(count)]


def measure(opts: argparse.Namespace, predictor: Any, image: Any, folder: Path, client: Any) -> dict[str, Any]:
    """Predict and refine, in process and through each door (see the module docstring)."""
    from tools.annotate.session import open_session

    size = image.size
    doors = Doors(client, predictor.metadata.keypoint_names, size)
    variants = []
    for i in range(opts.runs * 3):
        path = folder / f"variant{i}.jpg"
        path.write_bytes(jpeg_variant(image, i))
        variants.append(path)
    times: dict[str, list[float]] = {k: [] for k in ("predict/in-process", "predict/label-studio",
                                                     "predict/x-anylabeling", "refine/in-process",
                                                     "refine/label-studio", "refine/x-anylabeling")}
    for i in range(opts.runs):
        times["predict/in-process"].append(timed(lambda: predictor.prediction(variants[3 * i])))
        times["predict/label-studio"].append(timed(lambda: checked(doors.ls_predict(variants[3 * i + 1], 10**6 + i))))
        uri = data_uri(variants[3 * i + 2].read_bytes())
        times["predict/x-anylabeling"].append(timed(lambda: checked(doors.xal_predict(uri))))
    session = open_session(predictor, image)
    clicks = click_targets(session.people(), size, opts.runs)
    cached = folder / "cached.jpg"
    cached.write_bytes(jpeg_variant(image, -1))
    cached_uri = data_uri(cached.read_bytes())
    checked(doors.ls_predict(cached, 1))  # into the cache
    checked(doors.xal_predict(cached_uri))
    for i, (index, k, x, y) in enumerate(clicks):
        times["refine/in-process"].append(timed(lambda: session.refine([(index, k, x, y)])))
        times["refine/label-studio"].append(timed(lambda: checked(doors.ls_click(cached, 1, k, x, y, "click"))))
        times["refine/x-anylabeling"].append(timed(lambda: checked(doors.xal_predict(cached_uri, [(x, y)]))))
    medians = {name: statistics.median(values) for name, values in times.items()}
    overhead = {f"{kind}/{door}": medians[f"{kind}/{door}"] - medians[f"{kind}/in-process"]
                for kind in ("predict", "refine") for door in ("label-studio", "x-anylabeling")}
    return {"median_ms": medians, "overhead_ms": overhead, "runs": opts.runs}


def load_test(opts: argparse.Namespace, base_url: str, names: Sequence[str], size: tuple[int, int], path: Path
              ) -> dict[str, Any]:
    """``opts.clients`` threads x ``opts.requests`` mixed requests; statuses by class, latency p50 / p95."""
    import httpx

    uri = data_uri(path.read_bytes())
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def client_thread(number: int) -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            doors = Doors(client, names, size)
            for i in range(opts.requests):
                x = float(np.clip(size[0] / 2 + 5 * ((number + i) % 7), 1, size[0] - 1))
                y = float(np.clip(size[1] / 3 + 4 * (i % 5), 1, size[1] - 1))
                kind = i % 3
                started = time.perf_counter()
                if kind == 0:
                    response = doors.ls_predict(path, 100 + number)
                elif kind == 1:
                    response = doors.ls_click(path, 100 + number, i % len(names), x, y, f"c{number}-{i}")
                else:
                    response = doors.xal_predict(uri, [(x, y)])
                elapsed = 1000 * (time.perf_counter() - started)
                with lock:
                    latencies.append(elapsed)
                    key = f"{response.status_code // 100}xx"
                    statuses[key] = statuses.get(key, 0) + 1

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(opts.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"clients": opts.clients, "requests": opts.clients * opts.requests, "statuses": statuses,
            "p50_ms": statistics.median(latencies), "p95_ms": float(np.percentile(latencies, 95)),
            "wall_s": wall}


def run(opts: argparse.Namespace, predictor_factory: Optional[Callable[[], Any]] = None) -> dict[str, Any]:
    import httpx
    from PIL import Image

    from models.predictor import Predictor
    from tools.annotate.browser_check import serve
    from tools.serve.app import ServeSettings, create_app

    image = Image.open(opts.image).convert("RGB")
    predictor = predictor_factory() if predictor_factory else Predictor(opts.config, opts.checkpoint)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            app = create_app(predictor, ServeSettings(threshold=0.0, allowed_root=folder))
            with serve(app) as url, httpx.Client(base_url=url.rstrip("/"), timeout=120) as client:
                result = measure(opts, predictor, image, folder, client)
                target = folder / "load.jpg"
                target.write_bytes(jpeg_variant(image, -2))
                result["load"] = load_test(opts, url.rstrip("/"), predictor.metadata.keypoint_names, image.size,
                                           target)
    finally:
        predictor.close()
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmark_serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="the result as JSON")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, predictor_factory: Optional[Callable[[], Any]] = None) -> int:
    import torch

    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    result = run(opts, predictor_factory)
    if opts.out:
        opts.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| step | in process | Label Studio door | X-AnyLabeling door | overhead LS / XAL |")
    print("|---|---|---|---|---|")
    m, o = result["median_ms"], result["overhead_ms"]
    for kind in ("predict", "refine"):
        print(f"| {kind} | {m[kind + '/in-process']:.0f} ms | {m[kind + '/label-studio']:.0f} ms | "
              f"{m[kind + '/x-anylabeling']:.0f} ms | {o[kind + '/label-studio']:+.0f} / "
              f"{o[kind + '/x-anylabeling']:+.0f} ms |")
    load = result["load"]
    print(f"load: {load['clients']} clients x {load['requests'] // load['clients']} requests: {load['statuses']}, "
          f"p50 {load['p50_ms']:.0f} ms, p95 {load['p95_ms']:.0f} ms, {load['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
