"""`whisper-serve transcribe FILE...`: each file submitted as an async job, a progress bar per
file from its events, the result written beside it (or into --out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from serve_app.cli.http import FAILED, CliError, JobFailed, Service

EXTENSIONS = {
    "json": "json",
    "verbose_json": "json",
    "diarized_json": "json",
    "text": "txt",
    "srt": "srt",
    "vtt": "vtt",
}


@dataclass(frozen=True)
class Request:
    format: str
    language: str | None
    model: str | None
    out: Path | None
    concurrency: int
    diarize: bool = False


def output_path(audio: Path, fmt: str, out: Path | None) -> Path:
    target = (out or audio.parent) / f"{audio.stem}.{EXTENSIONS[fmt]}"
    if target.resolve() == audio.resolve():
        raise CliError(f"{audio}: the result would overwrite the audio; use --out", FAILED)
    return target


def progress_bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


def bar_for(bars: Progress, task: TaskID) -> Callable[[str, dict[str, Any]], None]:
    """A job's events moving its progress bar."""

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "running":
            bars.update(task, status="running")
        elif kind == "progress" and data.get("duration"):
            bars.update(task, total=data["duration"], completed=data["processed_seconds"])

    return on_event


async def transcribe_files(
    service: Service, files: list[Path], request: Request, console: Console
) -> int:
    """The exit code: 0 when every file was transcribed."""
    for audio in files:
        if not audio.is_file():
            raise CliError(f"{audio}: no such file")
    if request.out:
        request.out.mkdir(parents=True, exist_ok=True)
    slots = asyncio.Semaphore(request.concurrency)
    failures: list[str] = []
    with progress_bars(console) as bars:

        async def one(audio: Path) -> None:
            task = bars.add_task(audio.name, total=None, status="waiting")
            async with slots:
                try:
                    written = await _transcribe(service, audio, request, bars, task)
                    bars.update(task, status=f"[green]{written}")
                except (CliError, JobFailed) as exc:
                    failures.append(f"{audio}: {exc}")
                    bars.update(task, status=f"[red]{exc}")
                    if isinstance(exc, CliError) and exc.exit_code != FAILED:
                        raise

        await asyncio.gather(*(one(audio) for audio in files))
    for failure in failures:
        console.print(f"[red]failed[/red] {failure}", highlight=False)
    return FAILED if failures else 0


async def _transcribe(
    service: Service, audio: Path, request: Request, bars: Progress, task: TaskID
) -> Path:
    target = output_path(audio, request.format, request.out)
    fields = {"word_timestamps": str(request.format == "verbose_json").lower()}
    if request.language:
        fields["language"] = request.language
    if request.model:
        fields["model"] = request.model
    if request.diarize or request.format == "diarized_json":
        fields["diarize"] = "true"
    bars.update(task, status="uploading")
    job = await service.submit(audio, fields)
    bars.update(task, status=_queued(job))

    final = await service.follow(job["id"], bar_for(bars, task))
    status = final.get("status")
    if status != "completed":
        error = final.get("error") or "no result"
        raise JobFailed(error if status == "failed" else f"{status}: {error}")
    response = await service.request(
        "GET", f"/v1/jobs/{job['id']}/result", params={"format": request.format}
    )
    target.write_bytes(response.content)
    bars.update(task, total=1, completed=1)
    return target


def _queued(job: dict[str, Any]) -> str:
    start = job.get("estimated_start")
    if job.get("status") != "queued" or not start:
        return str(job.get("status", "queued"))
    at = datetime.fromisoformat(start).astimezone()
    return f"queued (#{job.get('queue_position')}, starts ~{at:%H:%M:%S})"
