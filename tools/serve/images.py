"""Where the service may read an image from, and how an image is decoded and checked.

An image reference is one of:

- a data URI (``data:image/png;base64,...``; the X-AnyLabeling door also takes bare base64);
- a Label Studio address: ``/data/upload/...`` or ``/data/local-files/?d=...`` (relative to the Label Studio host)
  or an ``http(s)`` URL on that host. The host is ``LABEL_STUDIO_URL`` and requests carry
  ``Authorization: Token LABEL_STUDIO_API_KEY``; any other host is refused, and so is a redirect away from it. A
  ``local-files`` path that exists under ``--allowed-root`` is read from the disk instead;
- a local path, only under ``--allowed-root`` (symbolic links are followed first, so a link pointing outside the
  root is refused too).

Every image is read up to ``max_bytes`` and refused, before its pixels are decoded, when its header says it has more
than ``max_pixels`` pixels. Its identity is the SHA-256 of its bytes, so the same picture under two names shares one
prediction and a changed file under the same name gets a new one.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

from tools.serve.errors import ForbiddenSourceError, ImageError

DEFAULT_MAX_IMAGE_BYTES = 32 << 20
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
FETCH_TIMEOUT_S = 30.0


class LoadedImage:
    """An image's bytes, their SHA-256 (hex) and its (width, height), read from the header. The pixels (RGB) are
    decoded on first use of :attr:`image`, so an image the service has already predicted (known by its digest) is
    never decoded again."""

    def __init__(self, data: bytes, digest: str, size: tuple[int, int], name: str):
        self.data, self.digest, self.size, self.name = data, digest, size, name
        self._image: Optional[Image.Image] = None

    @property
    def image(self) -> Image.Image:
        """The decoded RGB image (``ImageError`` for bytes whose header read but whose pixels do not)."""
        if self._image is None:
            self._image = _open(self.data, self.name, lambda image: image.convert("RGB"))
            if self._image.size != self.size:
                raise ImageError(f"image {self.name} decodes to another size than its header says")
        return self._image


def _open(data: bytes, name: str, use: Callable[[Image.Image], Any]) -> Any:
    """``use`` applied to the opened image; PIL's failures become an ``ImageError`` naming ``name``."""
    try:
        with warnings.catch_warnings():  # callers check the pixel count themselves, instead of PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return use(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image {name}: {exc}; send a JPEG, PNG, BMP, WebP or TIFF image") from exc


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Image bytes, checked from their header; ``ImageError`` (naming ``name``) for bytes that are no image or one
    over ``max_pixels``. The pixels are decoded when :attr:`LoadedImage.image` is first read."""
    def checked_size(image: Image.Image) -> tuple[int, int]:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"image {name} is {width}x{height} pixels, more than the limit of {max_pixels}; "
                             "send a smaller image (or start the service with a larger --max-pixels)")
        return width, height

    size = _open(data, name, checked_size)
    return LoadedImage(data, hashlib.sha256(data).hexdigest(), size, name)


def decode_base64(text: str, max_bytes: int) -> bytes:
    """The bytes of a data URI (``data:...;base64,...``) or of bare base64 text."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageError("a data URI image must be base64 encoded ('data:image/png;base64,...')")
    if len(text) > max_bytes * 4 // 3 + 8:
        raise ImageError(f"the image is larger than the limit of {max_bytes} bytes; send a smaller image")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"the image is not valid base64 ({exc}); send it as 'data:image/png;base64,...'") from exc


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the host it started on (never to a host the service may not read from)."""

    def __init__(self, origin: tuple[str, str, int]):
        super().__init__()
        self.origin = origin

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's hook)
        if _origin(newurl) != self.origin:
            raise ForbiddenSourceError(f"Label Studio redirected the image to {urlsplit(newurl).netloc}, another "
                                       "host; the service reads images from the Label Studio host only")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class ImageSource:
    """Reads and decodes image references (see the module docstring) within the configured limits."""

    def __init__(self, allowed_root: Optional[str | Path] = None, label_studio_url: Optional[str] = None,
                 api_key: Optional[str] = None, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.allowed_root = Path(allowed_root).resolve() if allowed_root else None
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        if self.label_studio_url and urlsplit(self.label_studio_url).scheme not in ("http", "https"):
            raise ValueError(f"LABEL_STUDIO_URL must be an http(s) address, got {label_studio_url!r}")
        self.api_key = api_key
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def load(self, reference: str) -> LoadedImage:
        """The decoded image a reference names (``ImageError`` / ``ForbiddenSourceError`` with a sentence)."""
        if not isinstance(reference, str) or not reference.strip():
            raise ImageError("the task names no image (expected a URL, a path or a data URI)")
        reference = reference.strip()
        name = reference if not reference.startswith("data:") else "(data URI)"
        return decode_image(self.read(reference), name, self.max_pixels)

    def read(self, reference: str) -> bytes:
        """The bytes of an image reference."""
        if reference.startswith("data:"):
            return decode_base64(reference, self.max_bytes)
        if reference.startswith("/data/"):
            local = self._local_files_path(reference)
            return self._read_file(local) if local is not None else self._fetch(self._label_studio_address(reference))
        scheme = urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch(reference)
        if len(scheme) > 1:  # s3://, gs://, file://, ... (a one-letter scheme is a Windows drive)
            raise ForbiddenSourceError(f"cannot read {reference}: {scheme}:// addresses are not served; give Label "
                                       "Studio URLs, paths under --allowed-root or data URIs")
        return self._read_file(self.check_path(reference))

    # ---- local files ---------------------------------------------------------------------------------------------
    def check_path(self, reference: str) -> Path:
        """The file a local path names, refused unless it is inside ``--allowed-root`` (after following links)."""
        if self.allowed_root is None:
            raise ForbiddenSourceError(f"cannot read {reference}: local paths are refused because the service was "
                                       "started without --allowed-root")
        path = Path(reference)
        path = (path if path.is_absolute() else self.allowed_root / path).resolve()
        if not path.is_relative_to(self.allowed_root):
            raise ForbiddenSourceError(f"cannot read {reference}: it is outside the allowed root {self.allowed_root}")
        if not path.is_file():
            raise ImageError(f"image {reference} not found under {self.allowed_root}", status=404)
        return path

    def _local_files_path(self, reference: str) -> Optional[Path]:
        parts = urlsplit(reference)
        if self.allowed_root is None or not parts.path.rstrip("/").endswith("/data/local-files"):
            return None
        relative = unquote(parse_qs(parts.query).get("d", [""])[0])
        if not relative:
            raise ImageError(f"{reference} names no file (its 'd' parameter is empty)")
        try:
            return self.check_path(relative)
        except ImageError:
            return None if self.label_studio_url else self.check_path(relative)

    def _read_file(self, path: Path) -> bytes:
        if path.stat().st_size > self.max_bytes:
            raise ImageError(f"image {path.name} is larger than the limit of {self.max_bytes} bytes", status=413)
        return path.read_bytes()

    # ---- Label Studio --------------------------------------------------------------------------------------------
    def _label_studio_address(self, path: str) -> str:
        if not self.label_studio_url:
            raise ImageError(f"cannot read {path}: it is a Label Studio address and LABEL_STUDIO_URL is not set; "
                             "start the service with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY in its environment")
        return self.label_studio_url + path

    def _fetch(self, url: str) -> bytes:
        if not self.label_studio_url or _origin(url) != _origin(self.label_studio_url):
            allowed = self.label_studio_url or "none: LABEL_STUDIO_URL is not set"
            raise ForbiddenSourceError(f"cannot read {url}: the service fetches images only from the Label Studio "
                                       f"host ({allowed})")
        headers = {"Authorization": f"Token {self.api_key}"} if self.api_key else {}
        opener = urllib.request.build_opener(_SameOriginRedirects(_origin(url)))
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=FETCH_TIMEOUT_S) as answer:
                data = answer.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise ImageError(f"Label Studio answered {exc.code} for {url}; check LABEL_STUDIO_API_KEY and that the "
                             "task's image exists") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ImageError(f"cannot fetch {url} from Label Studio ({exc}); check LABEL_STUDIO_URL") from exc
        if len(data) > self.max_bytes:
            raise ImageError(f"image {url} is larger than the limit of {self.max_bytes} bytes", status=413)
        return data
