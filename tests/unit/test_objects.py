"""s3:// names from outside: well formed, and inside a grant, or refused before any request."""

from __future__ import annotations

import pytest

from serve_app.errors import PathNotAllowedError
from serve_app.media.objects import Grant, ObjectRef, resolve_object

GRANTS = [Grant.parse("audio-in/calls"), Grant.parse("s3://whole-bucket")]


def test_a_well_formed_name_in_a_grant_resolves() -> None:
    ref = resolve_object("s3://audio-in/calls/2026/a b.mp3", GRANTS)
    assert ref == ObjectRef("audio-in", "calls/2026/a b.mp3")
    assert str(ref) == "s3://audio-in/calls/2026/a b.mp3" and ref.name == "a b.mp3"
    assert resolve_object("s3://whole-bucket/x.wav", GRANTS).key == "x.wav"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("s3://audio-in/calls/../secret/x.mp3", "segment"),
        ("s3://audio-in/../audio-in/calls/x.mp3", "segment"),
        ("s3://audio-in/calls/./x.mp3", "segment"),
        ("s3://audio-in//etc/passwd.mp3", "must not start with '/'"),
        ("s3://audio-in/calls//x.mp3", "segment"),
        ("s3://audio-in/calls/" + "a" * 1100 + ".mp3", "the limit is 1024"),
        ("s3://audio-in/calls/é" * 300, "the limit is 1024"),  # bytes, not characters
        ("s3://audio-in/calls/x\x00.mp3", "control characters"),
        ("s3://audio-in/calls/x\n.mp3", "control characters"),
        ("s3://audio-in/calls\\..\\x.mp3", "backslash"),
        ("s3://audio-in/calls/\udcff.mp3", "not valid Unicode"),
        ("s3://audio-in/", "key is empty"),
        ("s3://audio-in", "key is empty"),
        ("s3://Audio_In/calls/x.mp3", "bucket name"),
        ("s3://a..b/calls/x.mp3", "bucket name"),
        ("s3:///calls/x.mp3", "bucket name"),
        ("S3://audio-in/calls/x.mp3", "Not an object name"),
        ("https://audio-in.s3.amazonaws.com/calls/x.mp3", "Not an object name"),
    ],
)
def test_hostile_names_are_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(PathNotAllowedError, match=why):
        resolve_object(raw, GRANTS)


def test_a_grant_is_a_folder_not_a_string_prefix() -> None:
    with pytest.raises(PathNotAllowedError, match="outside the allowed buckets"):
        resolve_object("s3://audio-in/calls-private/x.mp3", GRANTS)
    with pytest.raises(PathNotAllowedError, match="outside the allowed buckets"):
        resolve_object("s3://other-bucket/calls/x.mp3", GRANTS)
    assert Grant.parse("audio-in/calls/") == Grant.parse("audio-in/calls") == GRANTS[0]


def test_no_grant_means_no_object_sources() -> None:
    with pytest.raises(PathNotAllowedError, match="not enabled"):
        resolve_object("s3://audio-in/calls/x.mp3", [])


def test_grants_nest_as_folders() -> None:
    outer = Grant.parse("audio-in/calls")
    assert Grant.parse("audio-in/calls/key-1").within(outer)
    assert not Grant.parse("audio-in/callsx").within(outer)
    assert not Grant.parse("audio-in").within(outer)
    assert outer.within(Grant.parse("audio-in"))


@pytest.mark.parametrize("bad", ["audio-in/../x", "audio-in//x", "no", "UPPER/x"])
def test_bad_grants_are_refused(bad: str) -> None:
    with pytest.raises(PathNotAllowedError):
        Grant.parse(bad)
