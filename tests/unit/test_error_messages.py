"""What clients are told when Ray fails under them: a message, never Ray's internals."""

from __future__ import annotations

import json

import pytest

from serve_app.api.errors import code_for, error_response, status_for
from serve_app.deployments.client import _replica_errors
from serve_app.errors import (
    AudioTooLargeError,
    InferenceError,
    ModelNotServedError,
    QuotaExceededError,
    ReplicaUnavailableError,
    ServiceError,
    UnauthorizedError,
)


class ActorDiedError(Exception):
    """Shaped like Ray's: it names the actor, the node and the worker."""


def test_a_dead_replica_is_reported_without_ray_details(caplog: pytest.LogCaptureFixture) -> None:
    internal = (
        "The actor died unexpectedly before finishing this task.\n"
        "\tclass_name: ServeReplica:whisper:TranscriberCPU actor_id: 5f3c0a1b ip: 10.1.2.3"
    )
    with pytest.raises(ReplicaUnavailableError) as caught, _replica_errors("TranscriberCPU"):
        raise ActorDiedError(internal)
    response = error_response(status_for(caught.value), caught.value.message)
    body = bytes(response.body).decode()
    assert response.status_code == 503
    for leak in ("ActorDiedError", "actor", "5f3c0a1b", "10.1.2.3", "ServeReplica"):
        assert leak not in body
    assert "5f3c0a1b" in caplog.text  # the operator still sees what happened


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnauthorizedError("no key"), "invalid_api_key"),
        (ModelNotServedError("no such model"), "model_not_found"),
        (QuotaExceededError("too many", 5), "rate_limit_exceeded"),
        (AudioTooLargeError("big"), "file_too_large"),
        (InferenceError("replica died"), None),
    ],
)
def test_the_error_code_is_a_string_or_null_as_in_openais_api(
    error: ServiceError, code: str | None
) -> None:
    """It was the HTTP status, an integer, which OpenAI's clients do not expect there."""
    response = error_response(status_for(error), error.message, code=code_for(error))
    body = json.loads(bytes(response.body))["error"]
    assert body["code"] == code and body["message"] == error.message
