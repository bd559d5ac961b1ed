"""Log records of the plain-Python modules inside a replica.

``serve_app`` and ``ingest`` log under their own module names; Ray Serve sets up handlers only
for ``ray.serve`` (the replica's log file and ``serve run``'s output). Without this, their
INFO lines (a job answered from the store, waiting on a claim) and warnings went nowhere an
operator looks."""

from __future__ import annotations

import logging

from serve_app.logcontext import JobContextFilter

_OURS = ("serve_app", "ingest")


def share_serve_handlers() -> None:
    """Send our modules' records through Serve's handlers, each line about a job carrying its
    ids (Serve's own lines too: its replica lines inside a job's calls); idempotent."""
    serve_logger = logging.getLogger("ray.serve")
    for handler in serve_logger.handlers:
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())
    for name in _OURS:
        ours = logging.getLogger(name)
        ours.setLevel(logging.INFO)
        ours.propagate = False
        for handler in serve_logger.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
