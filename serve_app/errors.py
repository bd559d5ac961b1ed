"""Domain errors raised by the core. Each edge (HTTP, AMQP) translates them.

``retryable`` says whether the same job may succeed on another attempt; the AMQP edge uses it to
choose between a retry and an immediate error result.
"""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line a client can act on: 'field.index: what is wrong; ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


class ServiceError(Exception):
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingsError(ServiceError):
    """A configuration value is invalid."""


class AudioError(ServiceError):
    """The audio given cannot be used, whatever we retry."""


class EmptyAudioError(AudioError):
    pass


class AudioNotFoundError(AudioError):
    pass


class PathNotAllowedError(AudioError):
    """A path from outside points where the service must not read."""


class AudioTooLargeError(AudioError):
    pass


class AudioTooLongError(AudioError):
    pass


class UnsupportedFormatError(AudioError):
    pass


class UndecodableAudioError(AudioError):
    pass


class RequestTooLargeError(ServiceError):
    """A request body past what its kind of request needs."""


class InvalidOptionError(ServiceError):
    """A request parameter is out of range or not supported by the model."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotServedError(ServiceError):
    """The request names a model this deployment does not serve."""


class DiarizationUnavailableError(ServiceError):
    """Diarization was asked of a service installed without it (the `diarize` extra)."""


class ModelUnavailableError(ServiceError):
    """A served model cannot be loaded (missing weights, no network for a download)."""


class InferenceError(ServiceError):
    """The model failed on audio that decoded fine; another replica may succeed."""

    retryable = True


class ReplicaUnavailableError(ServiceError):
    """A model replica died, timed out or could not be reached; the job may be retried."""

    retryable = True


class MalformedRequestError(ServiceError):
    """A queued request is missing fields or has wrong types."""


class JobNotFoundError(ServiceError):
    """No job has this id (or it was deleted after its retention time)."""


class JobCancelledError(ServiceError):
    """The job was cancelled by request while it ran (or before a retry of it)."""


class JobStateError(ServiceError):
    """The job is not in a state that allows this (a finished job cannot be cancelled)."""


class JobNotReadyError(ServiceError):
    """The job has no result yet, or never will (failed, cancelled)."""


class QueueUnavailableError(ServiceError):
    """The job could not be queued durably (RabbitMQ down); nothing was accepted."""

    def __init__(
        self,
        message: str = "The job queue is unavailable; nothing was accepted, try again later",
        retry_after_s: int = 10,
    ) -> None:
        super().__init__(message)
        # An outage is not over in a second: clients that honour Retry-After back off.
        self.retry_after_s = retry_after_s

    retryable = True


class UnauthorizedError(ServiceError):
    """Missing or unknown API key."""


class ForbiddenError(ServiceError):
    """A valid key asks for what it may not do (whatever the request's values)."""


class ServiceBusyError(ServiceError):
    """The service is at a limit it sets itself to stay up (decodes, held audio, streams); the
    same request later will be taken."""

    retryable = True

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceededError(ServiceBusyError):
    """One API key has too much queued or spooled; its other requests still pass."""


class BacklogFullError(ServiceBusyError):
    """More audio waits than the service lets in on the sync routes; ``retry_after_s`` is how
    long its pools need, at their measured speed, to get back under the bound."""


class NoReplicaError(ServiceBusyError):
    """No model pool has a running replica and none can be started by a request (their nodes
    are down, or they are still starting): a caller that cannot wait comes back later."""


class StorageUnavailableError(ServiceBusyError):
    """Object storage (S3, MinIO) did not answer or failed on its side: the same request
    later will pass. A job is not charged an attempt for it; it waits for the bucket."""

    def __init__(self, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message, retry_after_s)
