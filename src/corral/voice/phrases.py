"""Where an answer's text is cut for speech: its first phrase as soon as it is complete, then
whole sentences, so the voice starts before the model has finished its first sentence."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

# A clause mark ends the first phrase when this many words precede it ("Sure, ..." stays whole).
MIN_PHRASE_WORDS = 3
# Without a clause mark the first phrase ends at the word boundary after this many words.
MAX_PHRASE_WORDS = 8
CLAUSE_MARKS = (",", ";", ":", " -", "—")


class FirstPhraseAggregator(SimpleTextAggregator):
    """Pipecat's sentence aggregator, except that each answer's first piece of speech ends at
    its first clause mark (after `min_words` words) or after `max_words` words, whichever comes
    first; a sentence end that comes sooner ends it as usual.

    Why: on two cores the bundled model writes about 20 tokens a second, so waiting for the
    first full stop keeps the user waiting for the whole first sentence before synthesis can
    start. Speaking "The capital of France," while the model writes "is Paris." costs nothing
    in the audio, which is continuous. The state resets at each answer's end (flush) and on an
    interruption.
    """

    def __init__(self, *, min_words: int = MIN_PHRASE_WORDS, max_words: int = MAX_PHRASE_WORDS) -> None:
        super().__init__(aggregation_type=TextType.SENTENCE)  # type: ignore[no-untyped-call]
        self.min_words = min_words
        self.max_words = max_words
        self._first_spoken = False

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        if self._first_spoken:
            async for sentence in super().aggregate(text):
                yield sentence
            return
        for i, char in enumerate(text):
            self._text += char
            piece = await self._check_sentence_with_lookahead(char) or self._first_phrase(char)
            if piece is not None:
                self._first_spoken = True
                yield piece
                async for sentence in super().aggregate(text[i + 1 :]):  # the rest: sentences
                    yield sentence
                return

    def _first_phrase(self, char: str) -> Aggregation | None:
        """The first phrase, if `char` (just appended) completes it: a space after a clause mark
        with enough words before it, or a space after `max_words` words."""
        if not char.isspace():
            return None
        head = self._text.rstrip()
        words = len(head.split())
        at_clause = any(head.endswith(mark) for mark in CLAUSE_MARKS) and not head.endswith("--")
        if (at_clause and words >= self.min_words) or words >= self.max_words:
            self._text = ""
            return Aggregation(text=head.strip(), type=TextType.SENTENCE)
        return None

    async def flush(self) -> Aggregation | None:
        self._first_spoken = False
        return await super().flush()

    async def handle_interruption(self) -> None:
        self._first_spoken = False
        await super().handle_interruption()  # type: ignore[no-untyped-call]

    async def reset(self) -> None:
        self._first_spoken = False
        await super().reset()  # type: ignore[no-untyped-call]
