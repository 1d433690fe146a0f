"""Where a request's images and videos may come from: base64 data URLs always; local files only under one allowed
folder; http(s) URLs only when remote media are allowed, and never from loopback, link-local, private or reserved
addresses (an SSRF guard). Videos follow the rules of images with their own size limit. Every refusal is a
`MediaError` whose message is safe to return to the client."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from paddlemix.datasets.conversation import ImageBytes, ImageRef

# Largest image file accepted from a URL or a data URL (bytes); pixel limits are checked later by the ImageReader.
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Largest video file accepted from a URL or a data URL (bytes); duration and frame size are checked when it is read.
DEFAULT_MAX_VIDEO_BYTES = 100 * 1024 * 1024
REMOTE_TIMEOUT_SECONDS = 10.0
MediaKind = Literal["image", "video"]


class MediaError(ValueError):
    """An image or video reference the server refuses; the message names the reason and the flag that would allow
    it."""


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; False for loopback (127.0.0.0/8, ::1), link-local
    (169.254.0.0/16, the cloud metadata service), private, shared, reserved, multicast and unspecified ones,
    IPv4-mapped IPv6 forms included."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    blocked = (ip.is_loopback, ip.is_link_local, ip.is_private, ip.is_reserved, ip.is_multicast, ip.is_unspecified)
    return ip.is_global and not any(blocked)


@dataclass(frozen=True)
class MediaPolicy:
    """The server's rules for image and video sources (`--allowed_local_media_path`, `--allow_remote_media`,
    `--max_video_bytes`)."""

    allowed_local_media_path: Path | None = None
    allow_remote_media: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES

    def resolve(self, url: str, kind: MediaKind = "image") -> ImageRef:
        """The image (video) behind an `image_url.url` (`video_url.url`): decoded bytes for data and http(s) URLs,
        a checked path for local files. Raises `MediaError` for anything the policy refuses or that cannot be read."""
        if not isinstance(url, str) or not url:
            raise MediaError(f"{kind}_url.url must be a non-empty string")
        scheme = urlparse(url).scheme.lower()
        if scheme == "data":
            return self._data_url(url, kind)
        if scheme in ("http", "https"):
            return self._remote(url, kind)
        if scheme == "file":
            return self._local(unquote(urlparse(url).path), kind)
        if scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
            raise MediaError(
                f"{kind} URL scheme {scheme!r} is not supported (use a data URL, a local path or http(s))"
            )
        return self._local(url, kind)

    def max_bytes(self, kind: MediaKind) -> int:
        return self.max_video_bytes if kind == "video" else self.max_image_bytes

    def _data_url(self, url: str, kind: MediaKind) -> ImageBytes:
        header, _, payload = url.partition(",")
        if not header.lower().startswith(f"data:{kind}/") or ";base64" not in header.lower():
            raise MediaError(f"a data URL must look like data:{kind}/<type>;base64,<data>")
        if len(payload) > self.max_bytes(kind) * 4 // 3 + 4:
            raise MediaError(f"{kind} data URL is larger than {self.max_bytes(kind)} bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"{kind} data URL is not valid base64") from None
        return ImageBytes(data, origin=f"data URL {kind}")

    def _local(self, path: str, kind: MediaKind) -> str:
        if self.allowed_local_media_path is None:
            raise MediaError(f"local {kind} paths are off on this server (start it with --allowed_local_media_path)")
        root = self.allowed_local_media_path.resolve()
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_relative_to(root):
            raise MediaError(f"local {kind} path is outside the folder given by --allowed_local_media_path")
        if resolved.is_dir():
            raise MediaError(f"local {kind} path is a folder: the server takes one {kind} file per part (a video as a "
                             "clip; frame lists are for training records and infer.py)")  # fmt: skip
        if not resolved.is_file():
            raise MediaError(f"local {kind} file not found under --allowed_local_media_path")
        return str(resolved)

    def _remote(self, url: str, kind: MediaKind) -> ImageBytes:
        if not self.allow_remote_media:
            raise MediaError(f"{kind} URLs are off on this server (start it with --allow_remote_media)")
        parsed = urlparse(url)
        host = parsed.hostname
        if not host:
            raise MediaError(f"{kind} URL has no host")
        try:
            infos = socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        except (socket.gaierror, UnicodeError):
            raise MediaError(f"{kind} URL host {host!r} does not resolve") from None
        addresses = [info[4][0] for info in infos]
        if not addresses or not all(is_public_address(address) for address in addresses):
            raise MediaError(f"{kind} URL points to a loopback, link-local, private or reserved address")
        return ImageBytes(self._download(url, addresses[0], kind), origin=url)

    def _download(self, url: str, address: str, kind: MediaKind = "image") -> bytes:
        """GET `url` from `address`, the address checked above, never from a second DNS answer (which could name
        an internal host: DNS rebinding); HTTPS still verifies the certificate against the URL's host name.
        No redirects; at most `max_bytes(kind)`; REMOTE_TIMEOUT_SECONDS per connect and per read."""
        import certifi
        import urllib3

        parsed = urlparse(url)
        host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
        timeout = urllib3.Timeout(connect=REMOTE_TIMEOUT_SECONDS, read=REMOTE_TIMEOUT_SECONDS)
        if parsed.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(address, port, timeout=timeout, retries=False, cert_reqs="CERT_REQUIRED",
                                               ca_certs=certifi.where(), server_hostname=host, assert_hostname=host)  # fmt: skip
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        name = f"[{host}]" if ":" in host else host
        headers = {"Host": f"{name}:{parsed.port}" if parsed.port else name, "User-Agent": "paddlemix-serve"}
        try:
            response = pool.urlopen("GET", target, headers=headers, redirect=False, retries=False,
                                    preload_content=False)  # fmt: skip
            try:
                if 300 <= response.status < 400:
                    raise MediaError(f"{kind} URL redirects; give the final URL")
                if response.status >= 400:
                    raise MediaError(f"{kind} URL answered HTTP {response.status}")
                data = bytearray()
                for chunk in response.stream(1 << 16):
                    data += chunk
                    if len(data) > self.max_bytes(kind):
                        raise MediaError(f"{kind} at the URL is larger than {self.max_bytes(kind)} bytes")
                return bytes(data)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as err:
            raise MediaError(f"{kind} URL could not be fetched ({type(err).__name__})") from None
        finally:
            pool.close()
