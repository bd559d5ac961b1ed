"""Files that are not audio but make FFmpeg open other files or sockets when it probes them.

Each payload is saved under an allowed root with an audio extension. A secret recording lies
outside the roots (reached through a sibling name, a symlinked directory or an absolute path);
a local TCP listener stands in for any host a playlist could make FFmpeg call.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.media.audio import SUPPORTED_EXTENSIONS


@dataclass
class Listener:
    """A TCP port that records every connection made to it."""

    port: int
    connections: list[str] = field(default_factory=list)


@contextmanager
def tcp_listener() -> Iterator[Listener]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    listener = Listener(port=server.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            listener.connections.append(f"{peer[0]}:{peer[1]}")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def payloads(root: Path, secret: Path, port: int) -> dict[str, bytes]:
    """Name -> bytes; ``secret`` is a real recording outside ``root``."""
    outside = root / "outside_link"
    if not outside.exists():
        outside.symlink_to(secret.parent, target_is_directory=True)
    sibling = root / "sibling_secret.wav"
    if not sibling.exists():
        sibling.write_bytes(secret.read_bytes())
    png = root.parent / "frame.png"
    if not png.exists():
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "color=red:s=32x32",
                "-frames:v",
                "1",
                str(png),
            ],
            check=True,
        )
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{}\n#EXT-X-ENDLIST\n"
    concat = "ffconcat version 1.0\nfile {}\n"
    return {
        "ffconcat_sibling": concat.format("sibling_secret.wav").encode(),
        "ffconcat_symlinked_dir": concat.format(f"outside_link/{secret.name}").encode(),
        "ffconcat_absolute": concat.format(secret).encode(),
        "sdp": (
            "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=probe\nc=IN IP4 127.0.0.1\nt=0 0\n"
            f"m=audio {port} RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
        ).encode(),
        "hls_http": (
            hls.format(f"http://127.0.0.1:{port}/segment.ts") + "#EXT-X-ENDLIST\n"
        ).encode(),
        "hls_file": (hls.format(str(secret)) + "#EXT-X-ENDLIST\n").encode(),
        "image_png": png.read_bytes(),
    }


def save_everywhere(root: Path, secret: Path, port: int) -> list[Path]:
    """Every payload saved with every supported audio extension, under ``root``."""
    paths = []
    for name, data in payloads(root, secret, port).items():
        for suffix in sorted(SUPPORTED_EXTENSIONS):
            path = root / f"{name}{suffix}"
            path.write_bytes(data)
            paths.append(path)
    return paths
