"""Domain errors to HTTP statuses, in OpenAI's error shape so its clients read the message."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serve_app import errors

logger = logging.getLogger(__name__)
T = TypeVar("T")

_STATUS: list[tuple[type[errors.ServiceError], int]] = [
    (errors.EmptyAudioError, 400),
    (errors.AudioNotFoundError, 404),
    (errors.PathNotAllowedError, 422),
    (errors.AudioTooLargeError, 413),
    (errors.AudioTooLongError, 413),
    (errors.UnsupportedFormatError, 415),
    (errors.UndecodableAudioError, 415),
    (errors.RequestTooLargeError, 413),
    (errors.InvalidOptionError, 422),
    (errors.ModelNotServedError, 422),
    (errors.DiarizationUnavailableError, 422),
    (errors.ModelUnavailableError, 503),
    (errors.InferenceError, 500),
    (errors.ReplicaUnavailableError, 503),
    (errors.JobNotFoundError, 404),
    (errors.JobStateError, 409),
    (errors.JobNotReadyError, 409),
    (errors.QueueUnavailableError, 503),
    (errors.UnauthorizedError, 401),
    (errors.ForbiddenError, 403),
    (errors.QuotaExceededError, 429),
    (errors.BacklogFullError, 429),
    (errors.ServiceBusyError, 503),
]


# OpenAI's ``code`` is a string or null: its own codes where one applies, a short name for the
# audio checks its API does not have, null for the rest.
_CODES: list[tuple[type[errors.ServiceError], str]] = [
    (errors.UnauthorizedError, "invalid_api_key"),
    (errors.ForbiddenError, "permission_denied"),
    (errors.ModelNotServedError, "model_not_found"),
    (errors.QuotaExceededError, "rate_limit_exceeded"),
    (errors.BacklogFullError, "rate_limit_exceeded"),
    (errors.EmptyAudioError, "empty_audio"),
    (errors.AudioNotFoundError, "audio_not_found"),
    (errors.PathNotAllowedError, "path_not_allowed"),
    (errors.AudioTooLargeError, "file_too_large"),
    (errors.AudioTooLongError, "audio_too_long"),
    (errors.UnsupportedFormatError, "unsupported_format"),
    (errors.UndecodableAudioError, "undecodable_audio"),
    (errors.RequestTooLargeError, "request_too_large"),
    (errors.StorageUnavailableError, "storage_unavailable"),
]


def code_for(exc: errors.ServiceError) -> str | None:
    return _first(_CODES, exc, None)


def status_for(exc: errors.ServiceError) -> int:
    return _first(_STATUS, exc, 500)


def _first(table: Sequence[tuple[type[errors.ServiceError], T]], exc: Exception, default: T) -> T:
    """The value of the first entry whose error type ``exc`` is (tables list subclasses first)."""
    return next((value for error_type, value in table if isinstance(exc, error_type)), default)


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    retry_after_s: int | None = None,
    code: str | None = None,
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    headers: dict[str, str] = {}
    if status == 401:  # the scheme, as RFC 9110 asks; OpenAI's clients send Bearer keys
        headers["WWW-Authenticate"] = "Bearer"
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
        headers=headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def _service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return error_response(
            status,
            exc.message,
            getattr(exc, "param", None),
            getattr(exc, "retry_after_s", None),
            code_for(exc),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        # loc is ("body", field, index...): the field is what a client can fix.
        loc: Sequence[Any] = problems[0].get("loc", ()) if problems else ()
        param = str(loc[1]) if len(loc) > 1 else None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {_client_message(e)}"
            for e in problems
        )
        return error_response(422, message or "Invalid request", param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's doing: the traceback for us, an error in the API's shape
        # for the client (a bare "Internal Server Error" breaks clients that parse JSON).
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "The server failed to answer this request")


def _client_message(problem: Any) -> str:
    # Pydantic words some checks with Python's types ("Expected UploadFile, received: <class
    # 'str'>"): say what the client must send instead.
    if problem.get("type") == "value_error" and "UploadFile" in str(problem.get("msg")):
        return "a file upload is required"
    return str(problem.get("msg"))
