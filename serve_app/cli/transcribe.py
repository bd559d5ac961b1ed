"""`whisper-serve transcribe FILE...`: each file submitted as an async job, a progress bar per
file from its events, the result written beside it (or into --out), never over an existing
file without --force and never through a symbolic link."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
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
    force: bool = False  # overwrite existing results (never through a link)


def output_path(audio: Path, fmt: str, out: Path | None) -> Path:
    target = (out or audio.parent) / f"{audio.stem}.{EXTENSIONS[fmt]}"
    if target.resolve() == audio.resolve():
        raise CliError(f"{audio}: the result would overwrite the audio; use --out", FAILED)
    return target


def plan_targets(files: list[Path], fmt: str, out: Path | None, force: bool) -> list[Path]:
    """Each file's result path, checked before anything is sent: two files that would write
    one path, a path that exists (without ``force``) or is a link (ever) stop the command."""
    problems: list[str] = []
    targets: list[Path] = []
    writers: dict[str, Path] = {}
    for audio in files:
        target = output_path(audio, fmt, out)
        # Compared by absolute path, links not followed: the link is what would be written.
        where = os.path.abspath(target)
        if where in writers:
            problems.append(f"{writers[where]} and {audio} would both write {target}")
        writers[where] = audio
        if target.is_symlink():
            problems.append(f"{target} is a symbolic link; results are never written through one")
        elif target.exists() and not force:
            problems.append(f"{target} exists (--force overwrites it)")
        targets.append(target)
    if problems:
        raise CliError("; ".join(problems) + "; nothing was sent")
    return targets


def write_result(target: Path, content: bytes, force: bool) -> None:
    """Whole or not at all, never through a link: a new file is created exclusively (a link or
    file that appeared since the plan is refused); ``force`` writes a temporary file beside it
    and renames it over the target (a rename replaces a link, it does not follow it)."""
    if not force:
        try:
            _write_new(target, content)
        except FileExistsError:
            raise CliError(
                f"{target} appeared while the job ran; not overwritten", FAILED
            ) from None
        return
    part = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    _write_new(part, content)
    try:
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _write_new(path: Path, content: bytes) -> None:
    """A file that did not exist, link or not, made with the usual mode (umask applied)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


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
    targets = plan_targets(files, request.format, request.out, request.force)
    slots = asyncio.Semaphore(request.concurrency)
    failures: list[str] = []
    with progress_bars(console) as bars:

        async def one(audio: Path, target: Path) -> None:
            task = bars.add_task(escape(audio.name), total=None, status="waiting")
            async with slots:
                try:
                    await _transcribe(service, audio, target, request, bars, task)
                    bars.update(task, status=f"[green]{escape(str(target))}")
                except (CliError, JobFailed) as exc:
                    failures.append(f"{audio}: {exc}")
                    bars.update(task, status=f"[red]{escape(one_line(str(exc)))}")
                    if isinstance(exc, CliError) and exc.exit_code != FAILED:
                        raise

        await asyncio.gather(*(one(a, t) for a, t in zip(files, targets, strict=True)))
    for failure in failures:
        console.print(f"[red]failed[/red] {escape(one_line(failure, 2000))}", highlight=False)
    return FAILED if failures else 0


def one_line(text: str, limit: int = 300) -> str:
    """Server text for a terminal: one line, control characters out, bounded."""
    flat = printable(text, keep="")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def printable(text: str, keep: str = "\n\t") -> str:
    """Server text for a terminal, lines kept: no escape sequences or other control codes."""
    return "".join(ch if ch.isprintable() or ch in keep else " " for ch in text)


async def _transcribe(
    service: Service, audio: Path, target: Path, request: Request, bars: Progress, task: TaskID
) -> None:
    fields = {"word_timestamps": str(request.format == "verbose_json").lower()}
    if request.language:
        fields["language"] = request.language
    if request.model:
        fields["model"] = request.model
    if request.diarize or request.format == "diarized_json":
        fields["diarize"] = "true"
    bars.update(task, status="uploading")
    job = await service.submit(audio, fields)
    job_id = job.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise CliError("the service accepted the file but named no job id", FAILED)
    bars.update(task, status=escape(_queued(job)))

    final = await service.follow(job_id, bar_for(bars, task))
    status = final.get("status")
    if status != "completed":
        error = str(final.get("error") or "no result")
        raise JobFailed(error if status == "failed" else f"{status}: {error}")
    response = await service.request(
        "GET", f"/v1/jobs/{job_id}/result", params={"format": request.format}
    )
    await asyncio.to_thread(write_result, target, response.content, request.force)
    bars.update(task, total=1, completed=1)


def _queued(job: dict[str, Any]) -> str:
    start = job.get("estimated_start")
    if job.get("status") != "queued" or not isinstance(start, str):
        return one_line(str(job.get("status", "queued")), 40)
    try:
        at = datetime.fromisoformat(start).astimezone()
    except ValueError:
        return "queued"
    return one_line(f"queued (#{job.get('queue_position')}, starts ~{at:%H:%M:%S})", 60)
