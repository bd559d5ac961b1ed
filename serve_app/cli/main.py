"""The `whisper-serve` command: transcribe files, publish AMQP requests, read and cancel jobs,
check health, against a service on this machine or a remote one (--url, --api-key)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from serve_app.cli.http import FAILED, CliError, Service
from serve_app.cli.listen import Listening, listen
from serve_app.cli.publish import Published, publish, requests_for, wait_for
from serve_app.cli.transcribe import EXTENSIONS, Request, one_line, transcribe_files

app = typer.Typer(
    help="Transcribe audio with a whisper-serve service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
jobs_app = typer.Typer(help="List, show and cancel jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
err = Console(stderr=True)
T = TypeVar("T")


@dataclass
class Target:
    url: str
    api_key: str | None

    def service(self) -> Service:
        return Service(self.url, self.api_key)


@app.callback()
def _target(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="WHISPER_SERVE_URL", help="The service's base URL")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(envvar="WHISPER_SERVE_API_KEY", help="Bearer key, if the service has keys"),
    ] = None,
) -> None:
    ctx.obj = Target(url, api_key)


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run a command; a CliError becomes its message and exit code, not a traceback."""
    try:
        return asyncio.run(work)
    except CliError as exc:
        err.print(f"[red]error:[/red] {escape(one_line(exc.message, 2000))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


Files = Annotated[list[Path], typer.Argument(help="Audio files", show_default=False)]


@app.command()
def transcribe(
    ctx: typer.Context,
    files: Files,
    format: Annotated[
        str, typer.Option("--format", "-f", help=f"One of {', '.join(EXTENSIONS)}")
    ] = "text",
    language: Annotated[str | None, typer.Option(help="ISO-639-1; detected if unset")] = None,
    model: Annotated[str | None, typer.Option(help="A model the service serves")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for results (else beside each file)")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Files in flight at once")] = 4,
    diarize: Annotated[bool, typer.Option(help="Who spoke when: speakers in the result")] = False,
    force: Annotated[
        bool, typer.Option(help="Overwrite existing results (never through a symbolic link)")
    ] = False,
) -> None:
    """Submit each file as a job, show its progress, write its result."""
    if format not in EXTENSIONS:
        raise typer.BadParameter(f"choose one of {', '.join(EXTENSIONS)}", param_hint="--format")
    request = Request(format, language, model, out, concurrency, diarize, force)

    async def work() -> int:
        async with ctx.obj.service() as service:
            return await transcribe_files(service, files, request, err)

    raise typer.Exit(_run(work()))


@app.command("publish")
def publish_files(
    ctx: typer.Context,
    sources: Annotated[
        list[str],
        typer.Argument(help="Audio files, or s3://bucket/key objects", show_default=False),
    ],
    wait: Annotated[bool, typer.Option(help="Follow each job and print its text")] = False,
    language: Annotated[str | None, typer.Option(help="ISO-639-1; detected if unset")] = None,
    batch: Annotated[int | None, typer.Option(help="import_batch_id for every request")] = None,
    diarize: Annotated[bool, typer.Option(help="Speakers on the results' segments")] = False,
    amqp_url: Annotated[
        str, typer.Option(envvar="RABBITMQ_URL", help="The broker the service consumes")
    ] = "amqp://guest:guest@localhost:5672/",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each job")] = 3600,
) -> None:
    """Publish Whisper-Local requests for files the service can read (its
    ALLOWED_AUDIO_ROOTS) or objects in its ALLOWED_AUDIO_BUCKETS; with --wait, follow them over
    HTTP (an admin key sees AMQP jobs)."""

    async def work() -> int:
        requests = requests_for(sources, language, batch, diarize)
        await publish(amqp_url, requests)
        published = [Published(s, r) for s, r in zip(sources, requests, strict=True)]
        for item in published:
            err.print(f"published {item.audio} as attachment_id {item.request.attachment_id}")
        if not wait:
            return 0
        async with ctx.obj.service() as service:
            return await wait_for(service, published, err, timeout)

    raise typer.Exit(_run(work()))


@app.command("listen")
def listen_live(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="An audio file, or - for raw PCM16 on stdin")],
    language: Annotated[str | None, typer.Option(help="ISO-639-1; detected if unset")] = None,
    model: Annotated[str | None, typer.Option(help="A model the service serves")] = None,
    vad: Annotated[
        bool, typer.Option(help="Turns end at silences (server VAD); else one turn in all")
    ] = True,
    silence_ms: Annotated[
        int, typer.Option(min=100, max=10000, help="Silence that ends a turn")
    ] = 500,
    speed: Annotated[
        float, typer.Option(min=0.1, max=4.0, help="A file's pace: 1 is real time")
    ] = 1.0,
    rate: Annotated[
        int, typer.Option(min=8000, max=48000, help="Sample rate of stdin PCM")
    ] = 24000,
) -> None:
    """Live transcription over /v1/realtime: prints each turn's text as it is spoken, one
    line per turn."""
    if source != "-" and not Path(source).is_file():
        raise typer.BadParameter(f"no such file: {source}", param_hint="SOURCE")
    options = Listening(language, model, vad, silence_ms, speed, rate)
    target: Target = ctx.obj
    code = _run(listen(target.url, target.api_key, source, options, sys.stdout, err))
    raise typer.Exit(code)


@app.command()
def health(ctx: typer.Context) -> None:
    """The service's health; exit code 1 unless it is ok."""

    async def work() -> dict[str, Any]:
        target: Target = ctx.obj
        async with target.service() as service:
            try:
                body = await service.json_object("GET", "/health")
            except CliError as exc:
                if not exc.message.startswith("503"):
                    raise
                body = {"status": "unavailable", "error": exc.message}
            return body

    body = _run(work())
    print(json.dumps(body, indent=2))
    raise typer.Exit(0 if body.get("status") == "ok" else FAILED)


@jobs_app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="queued, running, completed, ...")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, for scripts")] = False,
) -> None:
    """Newest first."""

    async def work() -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        async with ctx.obj.service() as service:
            page = (await service.json_object("GET", "/v1/jobs", params=params)).get("data")
            if not isinstance(page, list) or not all(isinstance(j, dict) for j in page):
                raise CliError("the service's job list is not a list of jobs")
            return page

    jobs = _run(work())
    if as_json:
        for job in jobs:
            print(json.dumps(job))
        return
    table = Table("id", "source", "status", "progress", "created", "file")
    for job in jobs:
        progress = job.get("progress")
        cells = [
            job.get("id"),
            job.get("source"),
            job.get("status"),
            f"{progress:.0%}" if isinstance(progress, int | float) else "",
            str(job.get("created_at") or "")[:19],
            job.get("filename") or "",
        ]
        table.add_row(*(escape(one_line(str(cell or ""), 120)) for cell in cells))
    Console().print(table)


@jobs_app.command("show")
def show_job(ctx: typer.Context, job_id: str) -> None:
    """One job as JSON."""
    print(json.dumps(_run(_job(ctx, "GET", job_id)), indent=2))


@jobs_app.command("cancel")
def cancel_job(ctx: typer.Context, job_id: str) -> None:
    """Cancel a queued or running job."""
    job = _run(_job(ctx, "DELETE", job_id))
    said = f"{job.get('id', job_id)} is {job.get('status', 'unknown')}"
    err.print(escape(one_line(said)), highlight=False)


async def _job(ctx: typer.Context, method: str, job_id: str) -> dict[str, Any]:
    target: Target = ctx.obj
    async with target.service() as service:
        return await service.json_object(method, f"/v1/jobs/{quote(job_id, safe='')}")


GLOBAL_OPTIONS = ("--url", "--api-key")


def global_options_first(argv: list[str]) -> list[str]:
    """``--url`` and ``--api-key`` may follow the subcommand too: they are moved before it,
    where click reads them (anything after ``--`` stays where it is)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg.split("=", 1)[0] in GLOBAL_OPTIONS:
            taken = 1 if "=" in arg else 2
            front.extend(argv[i : i + taken])
            i += taken
            continue
        rest.append(arg)
        i += 1
    return front + rest


def main() -> None:
    # The broker client logs its connection errors itself; the command says them once.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    app(args=global_options_first(sys.argv[1:]))
