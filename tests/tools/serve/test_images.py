"""Image sources: a stand-in Label Studio host (its token is sent; other hosts and redirects away are refused),
local-files paths read under the allowed root, data URIs."""
from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.serve.errors import ForbiddenSourceError, ImageError
from tools.serve.images import ImageSource, decode_base64


@pytest.fixture
def fake_label_studio(image_paths):
    """An HTTP server playing Label Studio: /data/upload/a.jpg (with the right token), a redirect elsewhere."""
    seen: list[str] = []
    body = image_paths["a"].read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization", ""))
            if self.path.startswith("/away"):
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/a.jpg")
                self.end_headers()
            elif self.headers.get("Authorization") != "Token secret-key":
                self.send_response(401)
                self.end_headers()
            elif self.path.startswith("/data/"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_label_studio_addresses_are_fetched_from_its_host_with_the_token(fake_label_studio, image_paths):
    url, seen = fake_label_studio
    source = ImageSource(label_studio_url=url, api_key="secret-key")
    for reference in ("/data/upload/1/a.jpg", f"{url}/data/upload/1/a.jpg", "/data/local-files/?d=pics/a.jpg"):
        assert source.load(reference).size == ImageSource(allowed_root=image_paths["a"].parent).load("a.jpg").size
    assert seen and set(seen) == {"Token secret-key"}
    with pytest.raises(ImageError, match="answered 401"):
        ImageSource(label_studio_url=url, api_key="wrong").load("/data/upload/1/a.jpg")
    with pytest.raises(ForbiddenSourceError, match="another host"):
        source.load(f"{url}/away")
    with pytest.raises(ForbiddenSourceError, match="Label Studio host"):
        source.load("http://127.0.0.2:1/data/upload/1/a.jpg")
    with pytest.raises(ImageError, match="larger than the limit"):
        ImageSource(label_studio_url=url, api_key="secret-key", max_bytes=100).load("/data/upload/1/a.jpg")


def test_local_files_are_read_from_the_allowed_root_first(image_paths):
    source = ImageSource(allowed_root=image_paths["a"].parent)
    assert source.load("/data/local-files/?d=sub/c.jpg").digest == source.load(str(image_paths["c"])).digest
    with pytest.raises(ForbiddenSourceError):
        source.load("/data/local-files/?d=../secret.txt")


def test_data_uris_decode_and_bad_ones_are_refused(image_paths):
    assert decode_base64("data:image/png;base64,aGVsbG8=", 100) == b"hello"
    assert decode_base64("aGVsbG8=", 100) == b"hello"
    with pytest.raises(ImageError, match="base64 encoded"):
        decode_base64("data:image/png,hello", 100)
    with pytest.raises(ImageError, match="larger than the limit"):
        decode_base64("data:image/png;base64," + "A" * 400, 100)
    with pytest.raises(ImageError, match="cannot decode"):
        ImageSource().load("data:image/png;base64,aGVsbG8=")


def test_pixels_are_decoded_once_and_a_truncated_image_is_refused(make_client, image_paths, data_uri):
    from tools.serve.errors import ImageError
    from tools.serve.images import decode_image

    data = image_paths["a"].read_bytes()
    loaded = decode_image(data, "a.jpg")  # the header only, so far
    assert loaded._image is None and loaded.size == loaded.image.size and loaded.image is loaded.image
    cut = decode_image(data[:len(data) // 2], "cut.jpg")  # its header reads; its pixels do not
    with pytest.raises(ImageError, match="cut.jpg"):
        cut.image
    answer = make_client().post("/v1/predict", json={
        "model": "clickpose", "image": "data:image/jpeg;base64," + base64.b64encode(data[:len(data) // 2]).decode()})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_IMAGE"
