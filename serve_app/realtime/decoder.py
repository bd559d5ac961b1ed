"""The decoding side of a live session: a growing turn decoded again and again for deltas, and
each ended turn decoded once more for the rest of its text, in order, one decode at a time.

Each decode is an ordinary request to the model pools (``Decode``), so a session's audio is
isolated from other requests as every request's is, and batches with them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.errors import ServiceError
from serve_app.media.audio import SAMPLE_RATE, AudioArray
from serve_app.realtime import protocol
from serve_app.realtime.agreement import Agreement, TimedWord, join
from serve_app.realtime.buffer import LiveBuffer
from serve_app.realtime.pacing import LiveLoad, LivePacing
from serve_app.realtime.protocol import Codes, Event, no_code
from serve_app.schemas import MAX_PROMPT_CHARS, TranscribeOptions, Transcript

logger = logging.getLogger("ray.serve")

Send = Callable[[Event], Awaitable[None]]
Decode = Callable[[AudioArray, TranscribeOptions], Awaitable[Transcript]]
# The session's current transcription options, with this prompt (None: the turn is not
# transcribed: the client set transcription to null).
Options = Callable[[str | None], TranscribeOptions | None]

MIN_AUDIO = SAMPLE_RATE // 10  # 100 ms: less is neither committed nor decoded
# A turn whose decode failed on a lost replica is decoded again for this long at most.
_RETRY_WINDOW_S = 30.0
_RETRY_PAUSE_S = 1.0
# A trimmed turn's decodes start this long before its last committed word.
_REHEAR_S = 0.2


@dataclass
class Turn:
    item_id: str
    start: int  # samples from the session's start, padding included
    offset: int  # where its next decode starts: later than ``start`` once trimmed
    decoded_to: int = 0  # where the latest decode's audio ended (or will, while it runs)
    heard_to: int = 0  # where the audio of the latest decode whose words were taken ended
    end: int | None = None
    agreement: Agreement = field(default_factory=Agreement)
    emitted: str = ""
    audio: AudioArray | None = None  # what the final decode hears, cut out when it ends
    dropped: bool = False  # cleared by the client: nothing more is sent for it
    unsent: list[TimedWord] = field(default_factory=list)  # committed by a trim, not yet sent
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # of the tokens sent so far

    def trim(self, now: int, pacing: LivePacing) -> None:
        """Start later decodes further on: Whisper hears 30 s at most, and a long turn (a client
        that never commits, a speaker who never pauses) must not grow without end. Later decodes
        start just before the last committed word (heard again, and left out as already
        committed): Whisper's word times are loose, and a cut at a word's end clips the next
        one. Where no word was committed for long, only audio the latest decode heard is cut:
        the words it heard there are committed first (and sent with the next delta)."""
        if (now - self.offset) / SAMPLE_RATE <= pacing.window_s:
            return
        for resume in self._resume_points():
            if (now - resume) / SAMPLE_RATE <= pacing.window_s - pacing.step_s:
                self.offset = max(self.offset, resume)
                return
        cut = min(now - int(pacing.keep_s * SAMPLE_RATE), self.heard_to)
        self.unsent += self.agreement.force((cut - self.start) / SAMPLE_RATE)
        if pending := self.agreement.pending:
            cut = min(cut, self._sample(pending[0].start - _REHEAR_S))
        self.offset = max(self.offset, cut)

    def _resume_points(self) -> list[int]:
        """Where later decodes may start, best first: in the pause after the last committed
        sentence (Whisper starts a window best at a sentence), else just before the last
        committed word."""
        committed = self.agreement.committed
        points = []
        for i in range(len(committed) - 1, -1, -1):
            if committed[i].text.rstrip().endswith((".", "?", "!")):
                after = committed[i + 1].start if i + 1 < len(committed) else committed[i].end
                points.append(self._sample((committed[i].end + max(after, committed[i].end)) / 2))
                break
        if committed:
            points.append(self._sample(committed[-1].start - _REHEAR_S))
        return [point for point in points if point > self.offset]

    def _sample(self, seconds: float) -> int:
        """The session sample ``seconds`` into this turn."""
        return self.start + int(max(0.0, seconds) * SAMPLE_RATE)

    def drop_unheard(self, now: int, pacing: LivePacing) -> float:
        """The last resort when decodes fall far behind the audio (a pool that is down): keep
        one window, drop the rest unheard; returns the seconds dropped."""
        keep_from = now - int(pacing.window_s * SAMPLE_RATE)
        if keep_from <= self.offset:
            return 0.0
        dropped = (keep_from - self.offset) / SAMPLE_RATE
        self.offset = self.heard_to = keep_from
        return dropped


class TurnDecoder:
    def __init__(
        self,
        session_id: str,
        send: Send,
        decode: Decode,
        options: Options,
        buffer: LiveBuffer,
        pacing: LivePacing,
        load: LiveLoad | None = None,
        codes: Codes = no_code,
    ) -> None:
        self._id, self._send, self._decode, self._options = session_id, send, decode, options
        self._buffer, self._pacing = buffer, pacing
        self._load = load or LiveLoad(interims=1)
        self._codes = codes
        self.open: Turn | None = None  # the turn still growing, set by the session
        self._ended: deque[Turn] = deque()
        self._wake = asyncio.Event()
        self._decoding: tuple[Turn, asyncio.Future[list[TimedWord] | None]] | None = None
        # Final decodes started when a speaker paused, by item: (the turn's offset then, where
        # the pause began, the decode). An ended turn keeps its own while the next turn pauses.
        self._early: dict[str, tuple[int, int, asyncio.Task[list[TimedWord] | None]]] = {}
        # Early decodes finished before their speaker went on: interim decodes of their turn.
        self._heard: deque[tuple[Turn, int, list[TimedWord] | None]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work())

    async def close(self) -> None:
        for _, _, decode in self._early.values():
            decode.cancel()
        self._early.clear()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    def pause(self, turn: Turn, at: int) -> None:
        """The speaker paused at sample ``at``: decode the turn to there now. If the pause turns
        out to end the turn (nothing but silence follows), that decode is its final one, and
        ``.completed`` comes a decode sooner after the VAD's silence_duration_ms."""
        self._drop_early(turn)
        if self._decoding is not None and self._decoding[0] is turn:
            self._decoding[1].cancel()  # an interim decode of less audio is moot
        audio = self._buffer.slice(turn.offset, at)
        decode = asyncio.create_task(self._final_decode(turn, audio))
        decode.add_done_callback(self._log_unused_failure)
        self._early[turn.item_id] = (turn.offset, at, decode)

    def _log_unused_failure(self, decode: asyncio.Task[list[TimedWord] | None]) -> None:
        # Read here, so that a failed early decode no one awaits still leaves a line.
        if not decode.cancelled() and (exc := decode.exception()) is not None:
            logger.warning("Live session %s: early decode failed: %r", self._id, exc)

    def resume(self, turn: Turn) -> None:
        """The speaker went on after a pause: an early decode that has finished serves as an
        interim one (on a busy replica, interims wait while it runs, and a turn paused at each
        sentence would get no delta otherwise); one still running is moot."""
        early = self._early.pop(turn.item_id, None)
        if early is None:
            return
        offset, at, decode = early
        if decode.done() and not decode.cancelled() and decode.exception() is None:
            if offset == turn.offset:
                self._heard.append((turn, at, decode.result()))
        else:
            decode.cancel()
        self._wake.set()

    def _drop_early(self, turn: Turn) -> None:
        early = self._early.pop(turn.item_id, None)
        if early is not None:
            early[2].cancel()

    def ended(self, turn: Turn) -> None:
        """``turn`` was committed: its final decode comes after every earlier turn's."""
        if self._decoding is not None and self._decoding[0] is turn:
            self._decoding[1].cancel()  # the final decode hears more; this one is moot
        self._ended.append(turn)
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ended:
                turn = self._ended.popleft()
                if not turn.dropped:
                    await self._guarded(self._finish(turn), turn)
            while self._heard:
                turn, at, words = self._heard.popleft()
                await self._guarded(self._take_early(turn, at, words), None)
            growing = self.open
            if growing is not None and self._due(growing):
                await self._guarded(self._interim(growing), None)
                self._wake.set()  # more may have arrived meanwhile

    async def _guarded(self, work: Awaitable[None], turn: Turn | None) -> None:
        """A failed final decode ends its turn with ``.failed``, a failed interim decode is
        skipped; the session goes on either way."""
        try:
            await work
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise
        except Exception as exc:
            known = isinstance(exc, ServiceError)
            if known:
                logger.warning("Live session %s: decoding failed: %s", self._id, exc)
            else:
                logger.exception("Live session %s: decoding failed", self._id)
            if turn is not None:
                error = {
                    "type": "server_error",
                    "code": self._codes(exc) if isinstance(exc, ServiceError) else None,
                    "message": str(exc) if known else "Transcription failed on the server",
                    "param": None,
                }
                await self._item_event("failed", turn, error=error)

    def _due(self, turn: Turn) -> bool:
        fresh = self._buffer.end - turn.decoded_to
        paused = turn.item_id in self._early
        return fresh >= self._pacing.step_s * SAMPLE_RATE and not turn.dropped and not paused

    async def _interim(self, turn: Turn) -> None:
        async def decode_in_a_free_slot() -> list[TimedWord] | None:
            async with self._load.interim():
                now = self._buffer.end  # what has arrived by the time a slot is free
                turn.trim(now, self._pacing)
                turn.decoded_to = now
                return await self._words(turn, self._buffer.slice(turn.offset, now), turn.offset)

        decoding = asyncio.ensure_future(decode_in_a_free_slot())
        self._decoding = (turn, decoding)
        try:
            words = await decoding
        finally:
            self._decoding = None
        newly = []
        if words is not None and turn.end is None and not turn.dropped:
            newly = turn.agreement.update(words)
            turn.heard_to = turn.decoded_to
        await self._delta(turn, newly)

    async def _take_early(self, turn: Turn, at: int, words: list[TimedWord] | None) -> None:
        """An early decode's words, as an interim decode's, unless later ones heard more."""
        if words is None or turn is not self.open or turn.dropped or at <= turn.heard_to:
            return
        turn.decoded_to, turn.heard_to = max(turn.decoded_to, at), at
        await self._delta(turn, turn.agreement.update(words))

    async def _finish(self, turn: Turn) -> None:
        assert turn.audio is not None and turn.end is not None
        words = await self._final_words(turn, turn.audio)
        if words is None:
            return  # the session does not transcribe
        await self._delta(turn, turn.agreement.beyond_committed(words))
        seconds = round((turn.end - turn.start) / SAMPLE_RATE, 3)
        usage = {"type": "duration", "seconds": seconds}
        more = {"logprobs": turn.logprobs} if self._logprobs() else {}
        await self._item_event("completed", turn, transcript=turn.emitted, usage=usage, **more)

    async def _final_words(self, turn: Turn, audio: AudioArray) -> list[TimedWord] | None:
        early = await self._early_words(turn)
        if early is not None:
            return early
        attempt, given_up_at = 1, time.monotonic() + _RETRY_WINDOW_S
        while True:
            try:
                return await self._final_decode(turn, audio)
            except ServiceError as exc:
                # A replica lost mid-decode, or none running while one starts: another decodes
                # the turn. A late transcript of a live turn still beats none.
                if not exc.retryable or time.monotonic() + _RETRY_PAUSE_S > given_up_at:
                    raise
                logger.warning(
                    "Live session %s: turn %s failed to decode (attempt %d), again: %s",
                    self._id,
                    turn.item_id,
                    attempt,
                    exc,
                )
                await asyncio.sleep(_RETRY_PAUSE_S)
                attempt += 1

    async def _final_decode(self, turn: Turn, audio: AudioArray) -> list[TimedWord] | None:
        async with self._load.final():
            return await self._words(turn, audio, turn.offset)

    async def _early_words(self, turn: Turn) -> list[TimedWord] | None:
        """The words of the decode started at the pause that ended ``turn``, if there is one
        and it heard the audio the final decode would (less the trailing silence)."""
        early = self._early.pop(turn.item_id, None)
        if early is None:
            return None
        offset, _, decode = early
        if offset != turn.offset:
            decode.cancel()
            return None
        try:
            return await decode
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise
            return None
        except Exception:
            return None  # logged by _log_unused_failure; the final decode runs again

    async def _delta(self, turn: Turn, words: list[TimedWord]) -> None:
        sent = [*turn.unsent, *words]
        text = join(sent)
        turn.unsent = []
        if not turn.emitted:
            text = text.lstrip()
        if not text:
            return
        turn.emitted += text
        if not self._logprobs():
            await self._item_event("delta", turn, delta=text)
            return
        tokens = [t.model_dump() for word in sent for t in word.logprobs or ()]
        turn.logprobs += tokens
        await self._item_event("delta", turn, delta=text, logprobs=tokens)

    def _logprobs(self) -> bool:
        """Whether the session includes token log probabilities in its events."""
        options = self._options(None)
        return options is not None and options.logprobs

    async def _item_event(self, kind: str, turn: Turn, **fields: Any) -> None:
        """conversation.item.input_audio_transcription.<kind> about ``turn``'s item."""
        await self._send(
            protocol.event(
                f"conversation.item.input_audio_transcription.{kind}",
                item_id=turn.item_id,
                content_index=0,
                **fields,
            )
        )

    async def _words(self, turn: Turn, audio: AudioArray, offset: int) -> list[TimedWord] | None:
        """The words of one decode of ``audio`` (which starts at sample ``offset``), timed from
        the turn's start; None when the session does not transcribe."""
        prompt = None
        if offset > turn.start and turn.emitted:
            # The turn's earlier audio is gone; its text carries the context instead.
            prompt = turn.emitted[-MAX_PROMPT_CHARS:]
        options = self._options(prompt)
        if options is None:
            return None
        if len(audio) < MIN_AUDIO:
            return []
        transcript = await self._decode(audio, options)
        shift = (offset - turn.start) / SAMPLE_RATE
        return [
            TimedWord(
                word.start + shift,
                word.end + shift,
                word.word,
                tuple(word.logprobs) if word.logprobs is not None else None,
            )
            for segment in transcript.segments
            for word in segment.words or []
        ]
