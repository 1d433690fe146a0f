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
