"""``python -m tools.serve --config CFG --checkpoint CKPT``: the Label Studio ML backend and X-AnyLabeling remote
server over one model (see docs/serve.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from tools.annotate.guard import LOCAL_HOSTS, host_name

DEFAULT_PORT = 9090  # the port Label Studio's ML backends use by convention


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.serve", description=__doc__)
    parser.add_argument("--config", required=True, help="the model's config (.cfg.py)")
    parser.add_argument("--checkpoint", required=True, help="the model's weights (.pth)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; any other needs --token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--token", default=os.environ.get("CLICKPOSE_SERVE_TOKEN"),
                        help="token every request must carry (default: $CLICKPOSE_SERVE_TOKEN)")
    parser.add_argument("--allowed-root", help="folder whose images may be named by local path")
    parser.add_argument("--annotations", help="COCO keypoints file the /webhook writes submitted annotations to")
    parser.add_argument("--threshold", type=float, default=0.3,
                        help="person score under which people are not shown (default 0.3)")
    parser.add_argument("--max-image-mb", type=float, default=32.0, help="largest image file accepted (MiB)")
    parser.add_argument("--max-pixels", type=int, default=None, help="largest image accepted (pixels)")
    parser.add_argument("--model-version", default=None, help="version reported to Label Studio "
                        "(default: clickpose-<checkpoint name>)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle the checkpoint fully (can run code: only for files you trust)")
    return parser.parse_args(argv)


def check_host(host: str, token: Optional[str]) -> Optional[str]:
    """Why the service may not start on ``host`` (None if it may): only the loopback goes without a token."""
    if host_name(host) not in LOCAL_HOSTS and not token:
        return (f"listening on {host} makes the service reachable from other machines: give it a --token (or "
                "$CLICKPOSE_SERVE_TOKEN) that clients must send, or keep the default --host 127.0.0.1")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    problem = check_host(args.host, args.token)
    if problem is None and args.allowed_root and not Path(args.allowed_root).is_dir():
        problem = f"--allowed-root {args.allowed_root} is not a folder"
    if problem is None and not 0.0 <= args.threshold <= 1.0:
        problem = f"--threshold must be in [0, 1], got {args.threshold}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    from models.predictor import Predictor
    from tools.annotate.store import AnnotationFileError
    from tools.serve.app import ServeSettings, create_app
    from tools.serve.images import DEFAULT_MAX_PIXELS
    from util.checkpoint import CheckpointError
    from util.config import ConfigError
    from util.files import ExclusiveFileLock, FileLockedError

    local = host_name(args.host) in LOCAL_HOSTS
    settings = ServeSettings(
        token=args.token, allowed_hosts=LOCAL_HOSTS if local else None,
        max_image_bytes=int(args.max_image_mb * (1 << 20)), max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        threshold=args.threshold, allowed_root=Path(args.allowed_root) if args.allowed_root else None,
        label_studio_url=os.environ.get("LABEL_STUDIO_URL") or None,
        label_studio_api_key=os.environ.get("LABEL_STUDIO_API_KEY") or None,
        annotations=Path(args.annotations).resolve() if args.annotations else None,
        model_version=args.model_version or f"clickpose-{Path(args.checkpoint).stem}")
    lock = None
    try:
        if settings.annotations:
            lock = ExclusiveFileLock(settings.annotations.parent / f".{settings.annotations.name}").acquire()
        predictor = Predictor(args.config, args.checkpoint, device=args.device, trust_checkpoint=args.trust_checkpoint)
        app = create_app(predictor, settings)
    except FileLockedError:
        print(f"error: {settings.annotations} is in use by another program; stop it or pass another --annotations",
              file=sys.stderr)
        return 2
    except (AnnotationFileError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Click-Pose service on http://{args.host}:{args.port}/  (Label Studio ML backend at /, X-AnyLabeling "
          f"remote server at /v1; model {settings.model_version}; Ctrl+C to stop)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        predictor.close()
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
