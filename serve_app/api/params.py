"""OpenAI's list and object parameters as multipart forms carry them: ``keywords[]=a`` repeated
(the openai SDK's encoding) or ``keywords=a``; ``chunking_strategy`` as ``auto``, a JSON object,
or the object's fields as ``chunking_strategy[threshold]=0.6`` (the SDK's encoding)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import FormData

from serve_app.errors import InvalidOptionError
from serve_app.model_options import check_keywords, check_languages, chunking_strategy

LIST_PARAMS = (
    "keywords",
    "languages",
    "include",
    "known_speaker_names",
    "known_speaker_references",
)
INCLUDABLE = frozenset({"logprobs"})
_CHUNKING = "chunking_strategy"


def is_form_extra(key: str) -> bool:
    """Whether a form field is one of these parameters (read by ``form_values``)."""
    name = key.removesuffix("[]")
    return name in LIST_PARAMS or key == _CHUNKING or key.startswith(f"{_CHUNKING}[")


def form_values(form: FormData) -> dict[str, Any]:
    """These parameters of a form under their plain names: lists, and chunking_strategy as
    sent (a string) or as an object of its fields."""
    values: dict[str, Any] = {}
    for name in LIST_PARAMS:
        found = form.getlist(f"{name}[]") + form.getlist(name)
        if any(not isinstance(value, str) for value in found):
            raise InvalidOptionError(f"{name} must be text, not a file", param=name)
        if found:
            values[name] = found
    fields = {
        key[len(_CHUNKING) + 1 : -1]: value
        for key, value in form.multi_items()
        if key.startswith(f"{_CHUNKING}[") and key.endswith("]")
    }
    plain = form.get(_CHUNKING)
    if not isinstance(plain, str | None) or any(not isinstance(v, str) for v in fields.values()):
        raise InvalidOptionError(f"{_CHUNKING} must be text, not a file", param=_CHUNKING)
    if fields and plain:
        raise InvalidOptionError(
            f"Send {_CHUNKING} once: as a value or as its fields", param=_CHUNKING
        )
    if fields or plain:
        values[_CHUNKING] = fields or plain
    return values


def extra_options(values: Mapping[str, Any], language: str | None) -> dict[str, Any]:
    """TranscribeOptions fields from these parameters, checked (``language``: the request's,
    normalized; languages are refused beside it)."""
    return {
        "keywords": check_keywords(values.get("keywords")),
        "languages": check_languages(values.get("languages"), language),
        "vad": chunking_strategy(values.get(_CHUNKING)),
        "logprobs": "logprobs" in _included(values.get("include")),
    }


def _included(values: object) -> set[str]:
    if values is None:
        return set()
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidOptionError("include must be a list of strings", param="include")
    unknown = sorted(set(values) - INCLUDABLE)
    if unknown:
        raise InvalidOptionError(
            f"include: {', '.join(unknown)} is not available; it takes: logprobs",
            param="include",
        )
    return set(values)


async def _form_values(request: Request) -> dict[str, Any]:
    # The route's own form parameters parsed this form already: Starlette keeps it.
    return form_values(await request.form())


FormExtrasDep = Annotated[dict[str, Any], Depends(_form_values)]
