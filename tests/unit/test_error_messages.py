"""What clients are told when Ray fails under them: a message, never Ray's internals."""

from __future__ import annotations

import pytest

from serve_app.api.errors import error_response, status_for
from serve_app.deployments.client import _replica_errors
from serve_app.errors import ReplicaUnavailableError


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
