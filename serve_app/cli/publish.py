"""`whisper-serve publish FILE...`: Whisper-Local requests on RabbitMQ, exactly as the seed's
producers publish them (persistent, on whisper_exchange, confirmed by the broker). With
--wait, each job's progress is read from the service's HTTP API (the job store knows AMQP
jobs by their key); results are never taken off whisper_results, which belongs to the
consumers that wait for them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.exceptions import AMQPError
from rich.console import Console
from rich.markup import escape

from ingest import contract as c
from ingest.topology import declare
from serve_app.cli.http import FAILED, CliError, Service
from serve_app.cli.transcribe import bar_for, one_line, printable, progress_bars
from serve_app.errors import PathNotAllowedError
from serve_app.media import objects
from serve_app.schemas import QueuedTranscriptionRequest


@dataclass(frozen=True)
class Published:
    audio: str  # as the command line named it
    request: QueuedTranscriptionRequest

    @property
    def job_id(self) -> str:
        return c.job_key(self.request)

    @property
    def name(self) -> str:
        return self.audio.rstrip("/").rsplit("/", 1)[-1]


def requests_for(
    sources: list[str], language: str | None, batch: int | None, diarize: bool = False
) -> list[QueuedTranscriptionRequest]:
    """Files as absolute paths (the service reads them under its ALLOWED_AUDIO_ROOTS), or
    s3:// objects as named (in its ALLOWED_AUDIO_BUCKETS); attachment ids from the clock, in
    microseconds, one apart."""
    first = time.time_ns() // 1000
    requests = []
    for i, source in enumerate(sources):
        body: dict[str, Any] = {"attachment_id": first + i, "audio_file_path": _where(source)}
        if language:
            body["language"] = language
        if batch is not None:
            body["import_batch_id"] = batch
        if diarize:  # our extra field: results' segments gain "speaker"
            body["diarize"] = True
        requests.append(QueuedTranscriptionRequest.model_validate(body))
    return requests


def _where(source: str) -> str:
    if objects.is_object_name(source):
        try:
            return str(objects.ObjectRef.parse(source))
        except PathNotAllowedError as exc:
            raise CliError(f"{source}: {exc.message}") from None
    if not Path(source).is_file():
        raise CliError(f"{source}: no such file")
    return str(Path(source).resolve())


async def publish(amqp_url: str, requests: list[QueuedTranscriptionRequest]) -> None:
    try:
        connection = await aio_pika.connect(amqp_url, timeout=10)
    except (AMQPError, OSError, TimeoutError) as exc:
        raise CliError(
            f"Cannot reach RabbitMQ at {_safe(amqp_url)} ({exc}); "
            "point --amqp-url or RABBITMQ_URL at it"
        ) from None
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel)  # as the service declares it: a first publish is not lost
        exchange = await channel.get_exchange(c.REQUEST_EXCHANGE)
        for request in requests:
            body = json.dumps(request.model_dump(exclude_defaults=True)).encode()
            message = aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
            )
            # Confirmed and routed (mandatory): a message the broker could not queue raises.
            await exchange.publish(message, c.REQUEST_ROUTING_KEY, mandatory=True)


async def wait_for(
    service: Service, published: list[Published], console: Console, timeout_s: float
) -> int:
    """Follow each job to its end and print its text; the exit code."""
    failures = 0
    with progress_bars(console) as bars:

        async def one(item: Published) -> dict[str, Any]:
            task = bars.add_task(escape(item.name), total=None, status="published")
            await _taken(service, item.job_id, timeout_s)

            final = await asyncio.wait_for(
                service.follow(item.job_id, bar_for(bars, task)), timeout_s
            )
            done = final.get("status") == "completed"
            bars.update(task, total=1, completed=1, status="[green]done" if done else "[red]failed")
            return final

        results = await asyncio.gather(*(one(item) for item in published), return_exceptions=True)
    for item, final in zip(published, results, strict=True):
        named = escape(f"{item.audio} (attachment_id {item.request.attachment_id})")
        console.print(f"[bold]{named}[/bold]", highlight=False)
        if isinstance(final, CliError) and final.exit_code != FAILED:
            raise final
        text = None if isinstance(final, BaseException) else _text(final)
        if isinstance(final, BaseException):
            failures += 1
            console.print(f"  [red]failed[/red]: {escape(one_line(str(final)))}", highlight=False)
        elif text is None:
            failures += 1
            said = one_line(f"{final.get('status')}: {final.get('error')}")
            console.print(f"  [red]{escape(said)}[/red]", highlight=False)
        else:
            print(printable(text))
    return FAILED if failures else 0


async def _taken(service: Service, job_id: str, timeout_s: float) -> None:
    """The job exists once an ingest replica has taken its message."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await service.request("GET", f"/v1/jobs/{job_id}")
            return
        except CliError as exc:
            if not exc.message.startswith("404") or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _safe(url: str) -> str:
    """An AMQP URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("amqp", url)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _text(job: dict[str, Any]) -> str | None:
    """A completed job's text; None for any other job (or a result without text)."""
    result = job.get("result")
    if job.get("status") != "completed" or not isinstance(result, dict):
        return None
    text = result.get("text")
    return text if isinstance(text, str) else None
