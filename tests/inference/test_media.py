from __future__ import annotations

import base64
from pathlib import Path

import pytest

from paddlemix.datasets.conversation import ImageBytes
from paddlemix.inference.media import MediaError, MediaPolicy, is_public_address


@pytest.mark.parametrize(
    "address, public",
    [("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("127.9.9.9", False), ("::1", False),
     ("169.254.169.254", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
     ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("fe80::1", False), ("fd00::1", False),
     ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False)],
)  # fmt: skip
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_sources_by_policy(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    image = tmp_path / "ok" / "a.png"
    image.write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "ok" / "link.png").symlink_to(tmp_path / "secret.png")
    closed, open_ = MediaPolicy(), MediaPolicy(tmp_path / "ok", allow_remote_media=True)
    inline = closed.resolve("data:image/png;base64," + base64.b64encode(b"abc").decode())
    assert isinstance(inline, ImageBytes) and inline.data == b"abc"
    assert open_.resolve(str(image)) == str(image.resolve()) == open_.resolve(f"file://{image}")
    refused = {
        closed: [str(image), "http://example.com/a.png", "data:text/plain;base64,YQ==", "data:image/png;base64,@@"],
        open_: [str(tmp_path / "secret.png"), str(tmp_path / "ok" / ".." / "secret.png"),
                str(tmp_path / "ok" / "link.png"), "file:///etc/passwd", "http://127.0.0.1/a.png",
                "http://169.254.169.254/latest", "http://localhost/a.png", "ftp://example.com/a.png", ""],
    }  # fmt: skip
    for policy, urls in refused.items():
        for url in urls:
            with pytest.raises(MediaError):
                policy.resolve(url)


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    """A frame folder sent to the server gets its own reason, not "file not found"."""
    (tmp_path / "frames").mkdir()
    with pytest.raises(MediaError, match="local video path is a folder: the server takes one video file per part"):
        MediaPolicy(tmp_path).resolve(str(tmp_path / "frames"), "video")


@pytest.fixture()
def image_host(monkeypatch: pytest.MonkeyPatch):
    """A loopback HTTP server posing as the public host images.example (DNS and the address check are patched);
    yields (port, the requests it saw as (path, Host header))."""
    import http.server
    import socket
    import threading

    from paddlemix.inference import media

    seen: list[tuple[str, str]] = []
    lookups: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers["Host"]))
            if self.path.startswith("/moved"):
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/")
                self.end_headers()
                return
            body = b"PNGDATA" * (100 if self.path.startswith("/big") else 1)
            self.send_response(200 if not self.path.startswith("/missing") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host == "images.example":  # the first answer passes the check; a later one would "rebind" elsewhere
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(media.socket, "getaddrinfo", resolve)
    monkeypatch.setattr(media, "is_public_address", lambda address: address == "127.0.0.1")
    try:
        yield server.server_address[1], seen, lookups
    finally:
        server.shutdown()
        server.server_close()


def test_remote_images_come_from_the_checked_address(image_host) -> None:
    """The download connects to the address the check saw (one lookup of images.example; a second one would
    answer another address, as in DNS rebinding), with the URL's host in the Host header; redirects, HTTP errors
    and oversize bodies are refused."""
    port, seen, lookups = image_host
    policy = MediaPolicy(allow_remote_media=True, max_image_bytes=100)
    image = policy.resolve(f"http://images.example:{port}/a.png?size=2")
    assert isinstance(image, ImageBytes) and image.data == b"PNGDATA"
    assert seen == [("/a.png?size=2", f"images.example:{port}")] and lookups == ["images.example"]
    for path, reason in [("moved", "redirects"), ("missing", "HTTP 404"), ("big", "larger than 100 bytes")]:
        lookups.clear()
        with pytest.raises(MediaError, match=reason):
            policy.resolve(f"http://images.example:{port}/{path}")
