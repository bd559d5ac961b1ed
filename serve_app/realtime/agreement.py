"""Which words of a growing turn are safe to send: a local-agreement policy.

A live turn is decoded again each time more of it has arrived. The last words of each decode
are guesses (a word cut off mid-syllable, a sentence Whisper will punctuate differently once
it hears the end), so a word is committed only when two consecutive decodes agree on it and on
everything before it (LocalAgreement-2, Macháček et al., "Turning Whisper into Real-Time
Transcription System", 2023). One relief: where two decodes differ only in their first word or
two (Whisper wavers over a turn's opening: "Morning." heard as "Good morning."), a run of words
they agree on after that, at the same times, commits the newer decode's words through it; else
one wavering word would hold back every delta of the turn. Committed words are sent as deltas
and never taken back: the turn's final text is the committed words plus whatever the final
decode has beyond them. Plain logic: the session feeds it each decode's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from serve_app.schemas import TokenLogprob

# A word that starts this much before the committed end is still taken as new: Whisper's word
# timestamps move by a few tens of ms between decodes of the same audio.
_OVERLAP_S = 0.1
# The committed words a decode is matched against, and how far a word's time may move between
# decodes and still be the same word.
_ANCHOR_WORDS = 12
_ANCHOR_REACH_S = 0.6
# The relief above: at most this many differing words first, then at least this many agreed.
_HEAD_WORDS = 2
_RUN_WORDS = 3
_NOT_WORD = re.compile(r"[^\w']+")


@dataclass(frozen=True)
class TimedWord:
    """A word as Whisper wrote it (with its leading space), timed from the turn's start."""

    start: float
    end: float
    text: str
    # Its tokens' log probabilities, when the session includes them (not what decodes agree on).
    logprobs: tuple[TokenLogprob, ...] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """What two decodes must agree on: case and punctuation may still change."""
        return _NOT_WORD.sub("", self.text.lower())


def join(words: Sequence[TimedWord]) -> str:
    return "".join(word.text for word in words)


@dataclass
class Agreement:
    committed: list[TimedWord] = field(default_factory=list)
    _pending: list[TimedWord] = field(default_factory=list)

    @property
    def committed_end(self) -> float:
        return self.committed[-1].end if self.committed else 0.0

    @property
    def pending(self) -> list[TimedWord]:
        """The latest decode's words beyond the committed ones: not agreed on yet."""
        return list(self._pending)

    def update(self, hypothesis: Sequence[TimedWord]) -> list[TimedWord]:
        """Take a decode of the turn so far; returns the words it newly commits."""
        fresh = self.beyond_committed(hypothesis)
        agreed = _agreed(self._pending, fresh)
        newly = fresh[:agreed]
        self.committed.extend(newly)
        self._pending = fresh[agreed:]
        return newly

    def force(self, before_s: float) -> list[TimedWord]:
        """Commit the pending words that end before ``before_s``: the audio before that point is
        about to be dropped, and what was heard in it must not be lost with it."""
        cut = 0
        while cut < len(self._pending) and self._pending[cut].end <= before_s:
            cut += 1
        newly, self._pending = self._pending[:cut], self._pending[cut:]
        self.committed.extend(newly)
        return newly

    def beyond_committed(self, hypothesis: Sequence[TimedWord]) -> list[TimedWord]:
        """The words of a decode that come after the committed ones. Found by the words
        themselves where they can be: the decode's word that matches the last committed word
        (or, heard differently this time, the one before it) and lies near it in time marks
        where the new words start. By time where none does. Whisper's word times move by a few
        hundred ms between decodes, so a new word timed early is lost to the time rule alone."""
        if not self.committed:
            return list(hypothesis)
        tail = self.committed[-_ANCHOR_WORDS:]
        matcher = SequenceMatcher(
            a=[w.key for w in tail], b=[w.key for w in hypothesis], autojunk=False
        )
        for block in reversed(matcher.get_matching_blocks()):
            if not block.size:
                continue
            last_c, last_h = block.a + block.size - 1, block.b + block.size - 1
            unmatched = len(tail) - 1 - last_c  # committed words after it, heard differently
            near = abs(hypothesis[last_h].start - tail[last_c].start) < _ANCHOR_REACH_S
            if unmatched <= 1 and near:
                return list(hypothesis[last_h + 1 + unmatched :])
        return [w for w in hypothesis if w.start > self.committed_end - _OVERLAP_S]


def _agreed(old: Sequence[TimedWord], new: Sequence[TimedWord]) -> int:
    """How many of ``new``'s words two consecutive decodes agree on: all from the first on, or
    (only where the first words differ) those through a run of ``_RUN_WORDS`` or more that
    both have within their first ``_HEAD_WORDS`` + 1 words, at the same times."""
    same = 0
    for a, b in zip(old, new, strict=False):
        if a.key != b.key:
            break
        same += 1
    if same:
        return same
    matcher = SequenceMatcher(a=[w.key for w in old], b=[w.key for w in new], autojunk=False)
    for block in matcher.get_matching_blocks():
        if block.a > _HEAD_WORDS or block.b > _HEAD_WORDS:
            break
        near = block.size and abs(old[block.a].start - new[block.b].start) < _ANCHOR_REACH_S
        if block.size >= _RUN_WORDS and near:
            return block.b + block.size
    return 0
