"""Route guards in-process: the real FastAPI app and a real SQLite job store, with a stand-in for
the model and queue side (the part these tests are not about). Auth before the body, owners,
body and field caps, per-key quotas, event-stream caps, held audio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from serve_app.api.app import create_api
from serve_app.api.streaming import stream_transcription
from serve_app.capacity.admission import AudioAdmission
from serve_app.errors import ServiceBusyError
from serve_app.schemas import TranscribeOptions
from tests.support.api_standin import ADMIN, KEY_A, KEY_B, StandIn, client


def _path_job(backend: StandIn, **extra: object) -> dict[str, object]:
    return {"audio_file_path": str(backend.settings.allowed_audio_roots[0] / "a.mp3"), **extra}


# --- authentication comes before the body ----------------------------------------------------


async def test_a_request_without_a_key_is_refused_before_its_body_is_read(
    backend: StandIn,
) -> None:
    app = create_api(backend)  # type: ignore[arg-type]
    reads: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append("body")
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/audio/transcriptions",
        "raw_path": b"/v1/audio/transcriptions",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 401
    assert reads == []


@pytest.mark.parametrize("key", [None, "wrong"])
async def test_an_anonymous_100_mb_upload_gets_401_and_writes_nothing(
    backend: StandIn, key: str | None
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"\0" * (1 << 20)

    async with client(backend, key) as c:
        response = await c.post(
            "/v1/jobs",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    tmp, spool = backend.settings.tmp_dir, backend.settings.spool
    assert not any(tmp.rglob("*")) if tmp.exists() else True
    assert not any(spool.rglob("*")) if spool.exists() else True


async def test_health_and_docs_stay_open(backend: StandIn) -> None:
    async with client(backend, None) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200


async def test_an_unexpected_failure_answers_500_in_the_apis_error_shape_and_is_logged(
    backend: StandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("the controller is gone")

    monkeypatch.setattr(backend, "health", broken)
    # Starlette answers, then raises the error on to the server (which logs it too).
    transport = httpx.ASGITransport(app=create_api(backend), raise_app_exceptions=False)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.get("/health")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "controller is gone" not in response.text  # internals stay in the log
    assert any("controller is gone" in r.exc_text for r in caplog.records if r.exc_text)


# --- jobs belong to the key that made them ------------------------------------------------------


async def test_other_keys_cannot_see_list_stream_or_cancel_a_job(backend: StandIn) -> None:
    async with (
        client(backend, KEY_A) as a,
        client(backend, KEY_B) as b,
        client(backend, ADMIN) as admin,
    ):
        job = (await a.post("/v1/jobs", json=_path_job(backend))).json()
        path = f"/v1/jobs/{job['id']}"
        for route in (path, f"{path}/result", f"{path}/events"):
            response = await b.get(route)
            assert response.status_code == 404, route
        assert (await b.delete(path)).status_code == 404
        assert (await b.get("/v1/jobs")).json()["data"] == []
        assert (await a.get(path)).json()["status"] == "queued"
        assert [j["id"] for j in (await admin.get("/v1/jobs")).json()["data"]] == [job["id"]]
        assert (await a.delete(path)).json()["status"] == "cancelled"


async def test_idempotency_keys_are_scoped_per_key(backend: StandIn) -> None:
    async with client(backend, KEY_A) as a, client(backend, KEY_B) as b:
        first = await a.post("/v1/jobs", json=_path_job(backend, idempotency_key="k1"))
        again = await a.post("/v1/jobs", json=_path_job(backend, idempotency_key="k1"))
        other = await b.post("/v1/jobs", json=_path_job(backend, idempotency_key="k1"))
        # A client key shaped like the internal AMQP ones makes an ordinary job of its own.
        internal_shape = await b.post(
            "/v1/jobs", json=_path_job(backend, idempotency_key="amqp:" + "0" * 64)
        )
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert internal_shape.status_code == 202
    assert backend.store.find_by_idempotency_key("amqp:" + "0" * 64) is None


# --- caps on what one request or one key may ask for --------------------------------------------


async def test_json_job_bodies_are_capped_at_a_few_kb(backend: StandIn) -> None:
    async with client(backend) as c:
        response = await c.post(
            "/v1/jobs",
            content=b'{"audio_file_path": "' + b"a" * 20000 + b'"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413 and "KB" in response.json()["error"]["message"]


async def test_prompts_longer_than_whisper_reads_are_refused(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    prompt = "word " * 401
    data = clip("en_office", ".mp3").read_bytes()
    async with client(backend) as c:
        job = await c.post("/v1/jobs", json=_path_job(backend, prompt=prompt))
        sync = await c.post(
            "/v1/audio/transcriptions", files={"file": ("a.mp3", data)}, data={"prompt": prompt}
        )
    assert job.status_code == 422 and job.json()["error"]["param"] == "prompt"
    assert sync.status_code == 422 and sync.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize("name", ["a\0b.mp3", "x" * 300 + ".mp3", "line\nbreak.mp3"])
async def test_bad_file_names_are_refused_before_spooling(backend: StandIn, name: str) -> None:
    # Built by hand: httpx would percent-escape the control characters.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
        + name.encode()
        + b'"\r\nContent-Type: audio/mpeg\r\n\r\nID3'
        + b"\0" * 100
        + b"\r\n--b--\r\n"
    )
    async with client(backend) as c:
        response = await c.post(
            "/v1/jobs", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert response.status_code == 422 and response.json()["error"]["param"] == "file"
    spool = backend.settings.spool
    assert not spool.exists() or not any(spool.iterdir())


async def test_unfinished_jobs_per_key_are_capped_with_retry_after(backend: StandIn) -> None:
    async with client(backend, KEY_A) as a, client(backend, KEY_B) as b:
        codes = [(await a.post("/v1/jobs", json=_path_job(backend))).status_code for _ in range(4)]
        refused = await a.post("/v1/jobs", json=_path_job(backend))
        other_key = await b.post("/v1/jobs", json=_path_job(backend))
    assert codes == [202, 202, 202, 429]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert other_key.status_code == 202


async def test_spooled_bytes_per_key_are_capped(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    data = clip("en_office", ".wav").read_bytes()  # about 560 kB; the quota is 1 MB
    async with client(backend) as c:
        codes = [
            (await c.post("/v1/jobs", files={"file": ("a.wav", data)})).status_code
            for _ in range(2)
        ]
    assert codes == [202, 429]
    assert len(list(backend.settings.spool.iterdir())) == 1


async def test_event_streams_are_capped_and_end_after_their_lifetime(backend: StandIn) -> None:
    async with client(backend) as c:
        job = (await c.post("/v1/jobs", json=_path_job(backend))).json()
        events = f"/v1/jobs/{job['id']}/events"
        loop = asyncio.get_running_loop()
        started = loop.time()
        # httpx's ASGI transport returns a response once the app is done with it: run both
        # subscribers at once and see which one waited.
        first = asyncio.create_task(c.get(events))
        await asyncio.wait_for(_until(lambda: backend.streams.open == 1), 5)
        second = await c.get(events)
        health = await c.get("/health")
        refused_after = loop.time() - started
        streamed = await first
        lasted = loop.time() - started
    assert second.status_code == 503 and "retry-after" in second.headers
    assert health.status_code == 200 and refused_after < 0.9
    assert streamed.status_code == 200 and "event: queued" in streamed.text
    assert 1 <= lasted < 5  # closed at its 1 s lifetime, the job still queued
    assert backend.streams.open == 0


async def test_decoded_audio_held_at_once_is_capped(backend: StandIn, clip) -> None:  # type: ignore[no-untyped-def]
    # 12.7 s decodes to 0.8 MB of float32; the budget is 1 MB, so a second one must wait.
    data = clip("en_office", ".mp3").read_bytes()
    async with client(backend) as c:
        first = asyncio.create_task(
            c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
        )
        await asyncio.wait_for(backend.transcribing.wait(), 30)
        assert backend.admission.held_bytes > 0
        second = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
        backend.release.set()
        assert (await first).status_code == 200
        third = await c.post("/v1/audio/transcriptions", files={"file": ("a.mp3", data)})
    assert second.status_code == 503 and int(second.headers["retry-after"]) > 0
    assert third.status_code == 200
    assert backend.admission.held_bytes == 0


async def test_decodes_past_the_queue_are_refused_at_once() -> None:
    admission = AudioAdmission(concurrency=1, queue=1, max_bytes=1 << 20)
    gate = asyncio.Event()

    async def decode() -> None:
        async with admission.decode_slot():
            await gate.wait()

    running = asyncio.create_task(decode())
    waiting = asyncio.create_task(decode())
    await asyncio.wait_for(_until(lambda: admission.waiting == 1), 5)
    with pytest.raises(ServiceBusyError):
        async with admission.decode_slot():
            pass
    gate.set()
    await asyncio.gather(running, waiting)
    assert admission.waiting == 0


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_text_field_where_a_file_belongs_is_explained_without_python_types(
    backend: StandIn,
) -> None:
    async with client(backend) as c:
        response = await c.post("/v1/audio/transcriptions", data={"file": "not a file"})
    error = response.json()["error"]
    assert response.status_code == 422 and error["param"] == "file"
    assert "upload is required" in error["message"] and "class" not in error["message"]


async def test_a_stream_whose_client_left_before_it_began_frees_its_audio() -> None:
    """The client hung up while its upload decoded: the body never started, and its decoded
    audio stayed reserved for good (about five 1 h uploads and everyone got 503)."""
    admission = AudioAdmission(concurrency=1, queue=None, max_bytes=10)
    held = admission.reserve(8)
    response = stream_transcription(None, None, TranscribeOptions(), held)  # type: ignore[arg-type]

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(0.2)  # the disconnect is seen first: the body never starts

    await response({"type": "http", "asgi": {"spec_version": "2.3"}}, gone, send)
    assert admission.held_bytes == 0
