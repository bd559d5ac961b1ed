"""The CLI against what it must not trust: result paths (existing files, links, clashes) and a
hostile service (markup, escape codes, malformed events, bodies past the cap), in-process; the
service is an httpx transport answering as a broken or hostile server would."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from serve_app.cli.http import CliError, Service
from serve_app.cli.main import global_options_first
from serve_app.cli.publish import requests_for
from serve_app.cli.transcribe import Request, plan_targets, transcribe_files, write_result

CLI = Path(sys.executable).parent / "whisper-serve"


def _audio(tmp_path: Path, *names: str) -> list[Path]:
    files = []
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ID3" + b"\0" * 64)
        files.append(path)
    return files


# --- where results go -------------------------------------------------------------------------


def test_two_inputs_with_one_stem_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    files = _audio(tmp_path, "a/talk.mp3", "b/talk.wav")
    with pytest.raises(CliError, match="would both write") as refused:
        plan_targets(files, "text", tmp_path / "out", force=True)
    assert refused.value.exit_code == 2 and "nothing was sent" in refused.value.message


def test_an_existing_result_is_kept_unless_force(tmp_path: Path) -> None:
    [audio] = _audio(tmp_path, "talk.mp3")
    (tmp_path / "talk.txt").write_text("mine")
    with pytest.raises(CliError, match="exists"):
        plan_targets([audio], "text", None, force=False)
    [target] = plan_targets([audio], "text", None, force=True)
    write_result(target, b"new", force=True)
    assert target.read_text() == "new" and not target.is_symlink()


def test_a_link_at_the_target_is_never_written_through(tmp_path: Path) -> None:
    [audio] = _audio(tmp_path, "talk.mp3")
    precious = tmp_path / "precious.conf"
    precious.write_text("keep")
    (tmp_path / "talk.txt").symlink_to(precious)
    for force in (False, True):
        with pytest.raises(CliError, match="symbolic link"):
            plan_targets([audio], "text", None, force=force)
    # A link planted after the plan (while the job ran): refused, or replaced, never followed.
    (tmp_path / "talk.txt").unlink()
    [target] = plan_targets([audio], "text", None, force=False)
    target.symlink_to(precious)
    with pytest.raises(CliError, match="appeared"):
        write_result(target, b"result", force=False)
    write_result(target, b"result", force=True)
    assert precious.read_text() == "keep"
    assert target.read_text() == "result" and not target.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.conf", "talk.mp3", "talk.txt"]


# --- what a hostile service sends -------------------------------------------------------------


class _Streamed(httpx.AsyncByteStream):
    """A body that arrives in chunks, as from a socket (``content=`` would be read at once)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self._data), 65536):
            yield self._data[at : at + 65536]


def _sent(status: int, data: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(status, stream=_Streamed(data), headers=headers)


def _service(events: str, result: bytes = b"text", max_bytes: int = 2**20) -> Service:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return _sent(202, b'{"id": "j1", "status": "queued"}')
        if request.url.path.endswith("/events"):
            return _sent(200, events.encode(), **{"content-type": "text/event-stream"})
        return _sent(200, result)

    return Service(
        "http://svc", None, transport=httpx.MockTransport(answer), max_response_bytes=max_bytes
    )


async def _transcribe(tmp_path: Path, service: Service) -> tuple[int, str, Path]:
    [audio] = _audio(tmp_path, "talk.mp3")
    out = io.StringIO()
    console = Console(file=out, width=200)
    async with service:
        code = await transcribe_files(
            service, [audio], Request("text", None, None, None, 1), console
        )
    return code, out.getvalue(), tmp_path / "talk.txt"


def _event(kind: str, data: object) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


async def test_server_text_with_markup_and_escape_codes_is_printed_as_text(tmp_path: Path) -> None:
    error = "[/bold] x \x1b]0;pwned\x07 [link=http://evil]"
    code, printed, target = await _transcribe(
        tmp_path, _service(_event("failed", {"status": "failed", "error": error}))
    )
    assert code == 1 and "[/bold] x" in printed and "\x1b]0;" not in printed
    assert not target.exists()


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"'])
async def test_malformed_event_data_fails_the_job_in_one_line(tmp_path: Path, data: str) -> None:
    code, printed, _ = await _transcribe(tmp_path, _service(f"event: progress\ndata: {data}\n\n"))
    assert code == 1 and "malformed 'progress' event" in printed
    assert "Traceback" not in printed


async def test_a_result_past_the_cap_is_not_read_or_written(tmp_path: Path) -> None:
    done = _event("completed", {"status": "completed"})
    service = _service(done, result=b"x" * (3 * 2**20), max_bytes=2**20)
    code, printed, target = await _transcribe(tmp_path, service)
    assert code == 1 and "sent too much" in printed and not target.exists()


async def test_a_compressed_body_counts_as_sent_not_as_inflated() -> None:
    bomb = gzip.compress(b"\0" * (8 * 2**20))  # 8 KB on the wire, 8 MB inflated

    def answer(request: httpx.Request) -> httpx.Response:
        return _sent(200, bomb, **{"content-encoding": "gzip"})

    service = Service(
        "http://svc", None, transport=httpx.MockTransport(answer), max_response_bytes=2**20
    )
    async with service:
        response = await service.request("GET", "/v1/jobs/j1/result")
    assert response.content == bomb  # kept as sent, never inflated in memory


async def test_a_body_that_is_not_json_is_a_plain_error() -> None:
    service = Service(
        "http://svc",
        None,
        transport=httpx.MockTransport(lambda _: _sent(200, b"<html>")),
    )
    async with service:
        with pytest.raises(CliError, match="not JSON"):
            await service.json("GET", "/health")


# --- options ----------------------------------------------------------------------------------


def test_global_options_may_follow_the_subcommand() -> None:
    assert global_options_first(["transcribe", "a.wav", "--url", "http://h:8000"]) == [
        "--url",
        "http://h:8000",
        "transcribe",
        "a.wav",
    ]
    assert global_options_first(["jobs", "list", "--api-key=k", "--", "--url"]) == [
        "--api-key=k",
        "jobs",
        "list",
        "--",
        "--url",
    ]


def test_the_installed_command_takes_url_after_the_subcommand(tmp_path: Path) -> None:
    [audio] = _audio(tmp_path, "talk.mp3")
    run = subprocess.run(
        [str(CLI), "transcribe", str(audio), "--url", "http://127.0.0.1:9", "--api-key", "k"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 2, run.stderr
    assert "No such option" not in run.stderr and "http://127.0.0.1:9" in run.stderr


def test_publish_sends_files_as_absolute_paths_and_objects_as_named(tmp_path: Path) -> None:
    [audio] = _audio(tmp_path, "a.mp3")
    requests = requests_for([str(audio), "s3://audio-in/calls/b.mp3"], "en", None)
    assert [r.audio_file_path for r in requests] == [
        str(audio.resolve()),
        "s3://audio-in/calls/b.mp3",
    ]
    assert requests[1].attachment_id == requests[0].attachment_id + 1
    for bad, problem in (
        ("s3://audio-in/../b.mp3", "segment"),
        ("s3://Bad_Bucket/b.mp3", "bucket name"),
        (str(tmp_path / "none.mp3"), "no such file"),
    ):
        with pytest.raises(CliError, match=problem):
            requests_for([bad], None, None)
