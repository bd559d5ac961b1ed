"""A small Server-Sent Events reader over httpx, as a browser's EventSource would read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    id: str | None
    event: str | None
    data: Any


def read(
    client: httpx.Client,
    url: str,
    last_event_id: str | None = None,
    until: frozenset[str] = frozenset({"completed", "failed", "cancelled"}),
    method: str = "GET",
    **request: Any,
) -> list[Event]:
    """Events until one of type ``until`` arrives or the server ends the stream."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Event] = []
    with client.stream(method, url, headers=headers, **request) as response:
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                continue  # keep-alive comment
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = fields[name] + "\n" + value if name in fields else value
                continue
            if "data" not in fields:
                fields = {}
                continue
            event = Event(fields.get("id"), fields.get("event"), json.loads(fields["data"]))
            events.append(event)
            fields = {}
            if event.event in until:
                break
    return events
