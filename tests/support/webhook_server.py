"""A local HTTP(S) server that receives webhooks, answering with scripted statuses, or as a
slow or hostile receiver would."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# answer: the scripted status at once. hang: never answer. trickle: a status line, then header
# bytes one every TRICKLE_EVERY_S, forever. trickle_body: a full 200 head, then the body that
# way. huge: a 200 with a HUGE_BODY-byte body.
Behaviour = Literal["answer", "hang", "trickle", "trickle_body", "huge"]

TRICKLE_EVERY_S = 0.2
HUGE_BODY = 10 * 1024 * 1024


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    statuses: list[int]
    received: list[Received] = field(default_factory=list)
    connections: int = 0  # accepted, whether or not a request followed
    sent: int = 0  # bytes of answer written after the status line
    finished: threading.Event = field(default_factory=threading.Event)  # a handler ended


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for one host name (and no IP address)."""

    cert_pem: bytes
    key_pem: bytes

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.cert_pem.decode())

    def server_context(self, directory: str) -> ssl.SSLContext:
        cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
        with open(cert, "wb") as f:
            f.write(self.cert_pem)
        with open(key, "wb") as f:
            f.write(self.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context


def self_signed(host: str) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@contextmanager
def webhook_server(
    statuses: list[int] | None = None,
    behaviour: Behaviour = "answer",
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    url_host: str | None = None,
) -> Iterator[Receiver]:
    """Answers the n-th POST with statuses[n] (the last one repeats), or behaves as asked.
    url_host names the server in receiver.url (default: the address it listens on)."""
    receiver = Receiver(url="", statuses=statuses or [200])
    lock = threading.Lock()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            with lock:
                receiver.connections += 1
            super().setup()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                receiver.received.append(Received(self.path, dict(self.headers), body))
                index = min(len(receiver.received), len(receiver.statuses)) - 1
                status = receiver.statuses[index]
            try:
                self._behave(status)
            except OSError:
                pass  # the client hung up, as it should on hostile answers
            finally:
                receiver.finished.set()

        def _behave(self, status: int) -> None:
            if behaviour == "hang":
                stop.wait()
            elif behaviour == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self._trickle()
            elif behaviour == "trickle_body":
                self._head(200, 10**9)
                self._trickle()
            elif behaviour == "huge":
                self._huge()
            else:
                self._head(status, 0)

        def _head(self, status: int, length: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _trickle(self) -> None:
            while not stop.wait(TRICKLE_EVERY_S):
                self.wfile.write(b"a")
                with lock:
                    receiver.sent += 1

        def _huge(self) -> None:
            # A small send buffer, so what was sent is close to what the client took in.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            self._head(200, HUGE_BODY)
            chunk = b"x" * 65536
            while receiver.sent < HUGE_BODY and not stop.is_set():
                self.wfile.write(chunk)
                with lock:
                    receiver.sent += len(chunk)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    shown = url_host or host
    scheme = "https" if tls is not None else "http"
    receiver.url = f"{scheme}://{shown}:{port}/hooks/whisper"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
