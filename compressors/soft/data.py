"""Training examples for the segment compressor, generated from corpus text with the trainer's own seeds.

Three generic kinds, each a (context, question, answer) triple whose answer the model can only give by
reading the context: a planted fact (a key and a random value in a sentence of its own), the sentence
that follows a quoted opening, and the text's next sentence. The evaluation documents are skipped.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.corpus import EVAL_DOCS, normalize  # which texts are held out, and the same unwrapping

_SENTENCE = re.compile(r"[^.!?]+[.!?][\"')\]]*\s*")
_FACTS = (
    ("The {key} code is {value}.", "What is the {key} code?"),
    ("Remember this: the {key} number is {value}.", "What is the {key} number?"),
    ("Note that {key} was set to {value}.", "What was {key} set to?"),
    ("The password for {key} is {value}.", "What is the password for {key}?"),
    ("{key} is stored under {value}.", "Under what is {key} stored?"),
)


@dataclass(frozen=True)
class Example:
    context: list[int]
    question: str
    answer: list[int]
    kind: str


def training_texts(corpus: Path) -> list[str]:
    files = [f for f in sorted(corpus.glob("*.txt")) if f.name not in EVAL_DOCS]
    if not files:
        raise FileNotFoundError(f"no training text in {corpus} (evaluation documents are skipped)")
    return [normalize(f.read_text(encoding="utf-8")) for f in files]


class ExampleMaker:
    def __init__(self, texts: list[str], tokenizer: Any, context_tokens: int, answer_tokens: int, seed: int) -> None:
        self.texts = texts
        self.tok = tokenizer
        self.context_tokens = context_tokens
        self.answer_tokens = answer_tokens
        self.rng = random.Random(f"compllm-train:{seed}")
        self.words = sorted({w for t in texts for w in re.findall(r"\b[a-z]{4,9}\b", t[:200_000])})

    def ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def sentences(self, chars: int) -> list[str]:
        """Consecutive sentences from a random place in a random training text (about `chars` characters)."""
        text = self.rng.choice(self.texts)
        start = self.rng.randrange(0, max(1, len(text) - chars * 2))
        window = text[start : start + chars * 2]
        found = _SENTENCE.findall(window)[1:]  # the first one is probably cut
        return found or [window]

    def value(self) -> str:
        kind = self.rng.random()
        if kind < 0.5:
            return str(self.rng.randint(10 ** self.rng.randint(3, 6), 10**7 - 1))
        if kind < 0.8:
            return self.rng.choice(self.words)
        return f"{self.rng.choice(self.words)}-{self.rng.randint(10, 99)}"

    def fit(self, sentences: list[str], limit: int) -> list[str]:
        """The leading sentences that fit `limit` tokens. Counted sentence by sentence (re-tokenizing the growing
        text was quadratic and starved a GPU trainer), then checked once whole, since a join can tokenize longer."""
        out: list[str] = []
        used = 0
        for s in sentences:
            used += len(self.ids(s))
            if used > limit:
                break
            out.append(s)
        while out and len(self.ids("".join(out))) > limit:
            out.pop()
        return out or [self.tok.decode(self.ids(sentences[0])[:limit])]

    def fact(self) -> Example:
        statement, question = self.rng.choice(_FACTS)
        key = f"{self.rng.choice(self.words)} {self.rng.choice(self.words)}"
        value = self.value()
        planted = statement.format(key=key, value=value).capitalize() + " "
        body = self.fit(self.sentences(self.context_tokens * 6), self.context_tokens - len(self.ids(planted)))
        at = self.rng.randint(0, len(body))
        context = self.ids("".join([*body[:at], planted, *body[at:]]))
        return Example(context, question.format(key=key), self.ids(value), "fact")

    def quote(self) -> Example:
        body = self.fit(self.sentences(self.context_tokens * 6), self.context_tokens)
        candidates = [s for s in body if len(s.split()) >= 8] or body
        target = self.rng.choice(candidates).strip()
        words = target.split()
        opening, rest = " ".join(words[:4]), " ".join(words[4:])
        answer = self.ids(rest)[: self.answer_tokens]
        return Example(
            self.ids("".join(body)), f'How does the sentence that begins "{opening}" go on?', answer, "quote"
        )

    def continuation(self) -> Example:
        found = self.sentences(self.context_tokens * 8)
        body = self.fit(found, self.context_tokens)
        following = found[len(body)] if len(body) < len(found) else found[-1]
        answer = self.ids(following.strip())[: self.answer_tokens]
        return Example(self.ids("".join(body)), "Write the sentence that comes right after the text.", answer, "next")

    def __call__(self) -> Example:
        pick = self.rng.random()
        if pick < 0.6:
            return self.fact()
        return self.quote() if pick < 0.85 else self.continuation()
