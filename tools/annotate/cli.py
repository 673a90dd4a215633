"""Command line of the annotation tool.

    python -m tools.annotate IMAGES --config CFG --checkpoint CKPT [--annotations FILE.json] [--port N]
    python -m tools.annotate --summary FILE.json      # the effort log of an annotation file

Serves the page on 127.0.0.1 only and prints its URL. Every change is saved at once to the annotation file
(default: IMAGES_keypoints.json beside the folder); starting again on the same file resumes where you were, and
an existing COCO keypoints file (from any tool) opens for review. While the tool runs it holds a lock on the file
(``.FILE.json.lock`` beside it): a second tool started on the same file refuses, naming the first one's PID and port.

``--watch CKPT`` switches to CKPT's model whenever the file changes (e.g. a fine-tuning run that writes it), as
``POST /api/model`` does; see :class:`CheckpointWatcher`.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.annotate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", help="folder of images (searched recursively)")
    parser.add_argument("--config", help="model config file (e.g. config/clickpose.cfg.py)")
    parser.add_argument("--checkpoint", help="trained weights (.pth)")
    parser.add_argument("--annotations", help="COCO keypoints file to write (and resume from, or review)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threshold", type=float, default=0.3, help="initial person score threshold")
    parser.add_argument("--no-pin-existing", action="store_true",
                        help="let refinement move keypoints loaded from an existing file (default: they stay)")
    parser.add_argument("--folder-moved", action="store_true",
                        help="the annotation file was written for these images in another folder: use it anyway")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="images with more pixels are skipped as unreadable (default: PIL's limit)")
    parser.add_argument("--watch", metavar="CKPT",
                        help="switch to this checkpoint's model whenever the file changes (checked every "
                             "--watch-interval seconds; used once its size is the same at two checks)")
    parser.add_argument("--watch-interval", type=float, default=2.0, metavar="SECONDS",
                        help="how often --watch looks at the file (default: 2)")
    parser.add_argument("--summary", metavar="FILE.json", help="print the effort log of an annotation file and exit")
    args = parser.parse_args(argv)
    if args.summary is None:
        missing = [flag for flag, value in (("IMAGES", args.images), ("--config", args.config),
                                             ("--checkpoint", args.checkpoint)) if not value]
        if missing:
            parser.error(f"missing {', '.join(missing)} (or use --summary FILE.json)")
    if not args.watch_interval > 0:
        parser.error(f"--watch-interval must be more than 0 seconds, got {args.watch_interval}")
    return args


def log_line(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class CheckpointWatcher:
    """Switch the model when a checkpoint file changes: :meth:`poll` looks at the file once (the background thread
    of :meth:`start` calls it every ``interval`` seconds).

    A change is a new (mtime, size, inode) against the file as it was at the start or at the last attempt. It is
    used only once the file looks the same at two polls in a row (a file still being written changes between
    them); a file written too slowly for that fails to load, is logged as refused, and is tried again at its next
    change. Every attempt is logged; nothing it meets (a file removed, damaged, another layout) stops the server.
    """

    def __init__(self, path: str | Path, switch: Callable[[str], dict[str, Any]], interval: float = 2.0,
                 log: Callable[[str], None] = log_line):
        self.path = Path(path).expanduser().resolve()
        self.switch = switch  # e.g. Workspace.switch_model; a ValueError is a refusal
        self.interval = interval
        self.log = log
        self._tried = self._seen = self._signature()  # the file at the start is the model in use (or not a change)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _signature(self) -> Optional[tuple[int, int, int]]:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def poll(self) -> str:
        """Look once: 'missing', 'unchanged', 'changing' (changed since the last poll: wait for it to settle),
        'switched', 'refused' (the model in use stays) or 'failed' (an unexpected error, logged)."""
        signature = self._signature()
        previous, self._seen = self._seen, signature
        if signature is None:
            return "missing"
        if signature == self._tried:
            return "unchanged"
        if signature != previous:
            return "changing"
        self._tried = signature  # tried once per version of the file, whatever the outcome
        try:
            info = self.switch(str(self.path))
        except ValueError as exc:
            self.log(f"--watch: not switching to {self.path}: {exc}")
            return "refused"
        except Exception as exc:  # never let the watcher (or the server) die of it
            self.log(f"--watch: switching to {self.path} failed ({type(exc).__name__}: {exc}); the model in use stays")
            return "failed"
        self.log(f"--watch: switched to {info.get('checkpoint')} ({info.get('num_keypoints')} keypoints); images "
                 "opened from now on are predicted by it")
        return "switched"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # e.g. the log's stream closed
                try:
                    self.log(f"--watch: {type(exc).__name__}: {exc}")
                except Exception:
                    pass

    def start(self) -> "CheckpointWatcher":
        self._thread = threading.Thread(target=self._run, name="clickpose-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 60)


def print_summary(path: Path) -> int:
    from tools.annotate import effort, store

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    tool = data.get(store.TOOL_KEY) if isinstance(data, dict) else None
    if not tool:
        print(f"error: {path} has no effort log (it was not written by the annotation tool)", file=sys.stderr)
        return 2
    text = effort.format_summary(effort.summarize(tool.get("images", {}), len(data.get("images", [])) or None))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # e.g. `--summary FILE | head -1` closed the pipe: what was read is all that was wanted
        # Python flushes stdout again at exit; point it at devnull so that flush does not fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 only (never on other interfaces)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it, uvicorn's separate writes of a response's head and body meet
    # Nagle's algorithm and the client's delayed ACK, about 40 ms added to every request on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"error: cannot listen on 127.0.0.1:{port} ({exc}); pick another --port") from exc
    sock.listen(128)  # listening before the URL is printed: early requests wait instead of being refused
    return sock


def claim(annotations: Path):
    """Lock the annotation file for this process's lifetime, then remove the temporary files that a killed save
    of it left (only now: another tool's save in progress would have one too). Raises ``FileLockedError``."""
    from util.files import ExclusiveFileLock, remove_stale_temp_files

    lock = ExclusiveFileLock(annotations.parent / f".{annotations.name}").acquire()
    remove_stale_temp_files(annotations.parent, [annotations.name])
    return lock


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.summary:
        return print_summary(Path(args.summary))
    import uvicorn

    from models.predictor import Predictor
    from tools.annotate.server import create_app
    from tools.annotate.store import AnnotationFileError
    from tools.annotate.workspace import ModelSource, Workspace
    from util.files import FileLockedError

    images = Path(args.images)
    if not images.is_dir():
        print(f"error: image folder not found: {images}", file=sys.stderr)
        return 2
    folder = images.resolve()
    annotations = (Path(args.annotations) if args.annotations
                   else folder.parent / f"{folder.name}_keypoints.json").resolve()
    try:
        lock = claim(annotations)
    except FileLockedError as exc:
        owner = exc.owner
        print(f"error: {annotations} is open in another annotation tool (pid {owner.get('pid', '?')}, "
              f"{owner.get('url') or 'port not known yet'}); close that one first (Ctrl+C) or pass another "
              "--annotations file", file=sys.stderr)
        return 2
    from util.allocator import keep_freed_memory

    keep_freed_memory()  # each image's prediction reuses the large CPU buffers of the last one
    def load_predictor(config: str, checkpoint: str) -> Predictor:  # the first model's and every switch's
        return Predictor(config, checkpoint, device=args.device)

    predictor = load_predictor(args.config, args.checkpoint)
    try:
        workspace = Workspace(images, annotations, predictor, threshold=args.threshold,
                              pin_existing=not args.no_pin_existing, max_pixels=args.max_pixels,
                              folder_moved=args.folder_moved,
                              source=ModelSource(args.config, args.checkpoint, load_predictor))
    except (AnnotationFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sock = bind(args.port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    lock.update(port=sock.getsockname()[1], url=url)
    print(f"{len(workspace.names)} images, annotations saved to {workspace.path}\nopen {url}  (Ctrl+C to stop)",
          flush=True)
    watcher = None
    if args.watch:
        watcher = CheckpointWatcher(args.watch, workspace.switch_model, args.watch_interval).start()
        print(f"watching {watcher.path} for a new model (every {args.watch_interval:g} s)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(workspace), log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:
        if watcher is not None:
            watcher.stop()
        workspace.close()
        lock.release()
    return 0
