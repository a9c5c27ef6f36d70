"""Copied answers: when the reader says the text does not hold the answer, but without conviction, the span of the
text it would most likely copy instead.

The 135M reader adapter abstains on most answerable docqa questions whose evidence it read, yet often gives its
abstention well under half of its probability, the rest spread over the many words an answer could start with; the
right answer is often the most likely span it would copy (bench/results/docqa-reading-dev-copy.md). So: the
abstention's probability (teacher-forced), and if it is below the reader's threshold, a decode constrained to copy
the text read: each of the `starts` most likely first words that begin a word of the text, continued greedily while
the reply stays a word-aligned piece of the text (case aside), ending where a word of the text ends. The most likely
of those copies is the answer.

The decode is the engine's (it needs the model's next-token log-probabilities); this module holds what does not:
which tokens keep a reply a copy of the text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

# Log-probabilities of the next token after the given one (the engine advances its cache by it).
Step = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class Copied:
    refusal_probability: float  # the reader's probability of its abstention reply
    text: str  # the most likely copy ("" when no first word of the text was among the candidates)
    logprob: float = 0.0  # the copy's log-probability under the constrained decode
    candidates: list[tuple[str, float]] = field(default_factory=list)  # every copy tried, with its log-probability


class CopyTargets:
    """Which tokens continue a reply as a copy of `text`: the reply, lower-cased, must occur in the text starting
    at a word's start. Built per context; the vocabulary's strings come from `vocabulary` (cached per tokenizer)."""

    def __init__(self, text: str, vocabulary: VocabularyStrings) -> None:
        self.text = text.lower()
        self.vocabulary = vocabulary

    def occurrences(self, reply: str) -> list[int]:
        """Where the reply starts a word of the text."""
        found, p = [], self.text.find(reply)
        while p != -1:
            if p == 0 or not self.text[p - 1].isalnum():
                found.append(p)
            p = self.text.find(reply, p + 1)
        return found

    def first(self, token: int) -> bool:
        """The token can open a copy: its text (spaces aside) starts a word of the text, and it is a word."""
        piece = self.vocabulary.strings[token].strip().lower()
        return bool(piece) and piece[0].isalnum() and bool(self.occurrences(piece))

    def next(self, reply: str) -> set[int]:
        """Tokens that keep `reply` (the copy so far, as decoded) a copy of the text."""
        reply = reply.lower()
        allowed: set[int] = set()
        for p in self.occurrences(reply):
            rest = self.text[p + len(reply) : p + len(reply) + self.vocabulary.longest]
            for k in range(1, len(rest) + 1):
                allowed.update(self.vocabulary.by_string.get(rest[:k], ()))
        return allowed

    def ends_word(self, reply: str) -> bool:
        """Some copy of the reply in the text ends where a word ends (no answer stops mid-word)."""
        reply = reply.lower()
        ends = (self.text[p + len(reply) : p + len(reply) + 1] for p in self.occurrences(reply))
        return any(not e or not e.isalnum() for e in ends)


class VocabularyStrings:
    """Each token's text, and the tokens by their lower-cased text (a copy matches the text case aside)."""

    def __init__(self, strings: Sequence[str], specials: set[int]) -> None:
        self.strings = list(strings)
        self.by_string: dict[str, list[int]] = {}
        for token, s in enumerate(self.strings):
            if s and token not in specials:
                self.by_string.setdefault(s.lower(), []).append(token)
        self.longest = max(len(s) for s in self.by_string)


@cache
def vocabulary_strings(tokenizer: object) -> VocabularyStrings:
    """The tokenizer's VocabularyStrings (seconds for a 49K vocabulary; kept per tokenizer)."""
    decode = tokenizer.decode  # type: ignore[attr-defined]
    specials = set(tokenizer.all_special_ids)  # type: ignore[attr-defined]
    return VocabularyStrings([decode([t]) for t in range(len(tokenizer))], specials)  # type: ignore[arg-type]


def copy_reply(
    first: torch.Tensor,
    step: Step,
    rewind: Callable[[], None],
    decode: Callable[[list[int]], str],
    targets: CopyTargets,
    refusal: str,
    starts: int = 4,
    max_tokens: int = 24,
    stops: Sequence[int] = (),
) -> tuple[str, float, list[tuple[str, float]]]:
    """The most likely copy of the text: the `starts` best first words (by `first`, the log-probabilities of the
    reply's first token), each continued greedily among the tokens that keep it a copy, back to the prompt's end
    (`rewind`) after each. A copy that is a start of the refusal ("The doc...") is not one."""
    refusal = refusal.lower()
    openings: list[int] = []
    for token in torch.argsort(first, descending=True)[:300].tolist():  # the best first tokens that open a copy
        piece = targets.vocabulary.strings[token].strip().lower()
        if token in stops or refusal.startswith(piece) or not targets.first(token):
            continue
        openings.append(token)
        if len(openings) == starts:
            break
    copies: dict[str, tuple[str, float]] = {}  # lower-cased copy -> (the copy as written, its log-probability)
    for token in openings:
        reply, logprob = [token], float(first[token])
        ended = False
        while len(reply) < max_tokens:
            logprobs = step(reply[-1])
            text = decode(reply).strip()
            allowed = targets.next(text)
            ends = targets.ends_word(text)
            best = torch.argsort(logprobs, descending=True)[:64].tolist()
            pick = next((t for t in best if t in allowed or (t in stops and ends)), None)
            if pick is None or pick in stops:
                ended = pick is not None or ends
                logprob += float(logprobs[pick]) if pick is not None else 0.0
                break
            reply.append(pick)
            logprob += float(logprobs[pick])
        rewind()
        text = decode(reply).strip()
        key = text.lower()
        if ended and text and not refusal.startswith(key) and (key not in copies or logprob > copies[key][1]):
            copies[key] = (text, logprob)
    ranked = sorted(copies.values(), key=lambda c: c[1], reverse=True)
    return (*ranked[0], ranked) if ranked else ("", 0.0, [])
