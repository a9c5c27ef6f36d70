"""Training examples for the segment compressor, generated from corpus text with the trainer's own seeds.

Four generic kinds, each a (context, question, answer) triple whose answer the model can only give by
reading the context: a planted fact (a key and a random value, a number, a word, a hyphenated word pair or a
hex code, in a sentence of its own, sometimes beside facts of other keys as distractors), where a person went
last (two or three moves of people of the trainer's own, none of the evaluation's names), the sentence that
follows a quoted opening, and the text's next sentence. The texts come from the trainer's caller (`tome train`
reads the corpus without the evaluation documents: evals.corpus.training_texts). A context is
`context_tokens` long unless the caller asks for another length (the trainer's curriculum does).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from engines.text import SENTENCE_END

_SENTENCE = re.compile(r"[^.!?]+" + SENTENCE_END + r"\s*")
# (statement planted in the text, question, answer): the answer restates the question as SmolLM2 itself answers
# such questions ("The byte vote code is 524619."), so the teacher's next-token distributions on it are what the
# model would say; a bare value right after the assistant turn opens is not (the teacher's CE on bare values was
# about 2.5 nats/token and it got none of them right, teacher-forced, on a held-out set).
_FACTS = (
    ("The {key} code is {value}.", "What is the {key} code?", "The {key} code is {value}."),
    ("Remember this: the {key} number is {value}.", "What is the {key} number?", "The {key} number is {value}."),
    ("Note that {key} was set to {value}.", "What was {key} set to?", "{key} was set to {value}."),
    ("The password for {key} is {value}.", "What is the password for {key}?", "The password for {key} is {value}."),
    ("{key} is stored under {value}.", "Under what is {key} stored?", "{key} is stored under {value}."),
    (
        "The secret value for {key} is: {value}.",
        "What is the secret value for {key} mentioned in the text?",
        "The secret value for {key} mentioned in the text is {value}.",
    ),
    (
        "One of the hidden {noun}s for {key} is: {value}.",
        "What is the hidden {noun} for {key} in the text?",
        "The hidden {noun} for {key} in the text is {value}.",
    ),
    (
        "Keep in mind that the {noun} of {key} is {value}.",
        "What is the {noun} of {key}?",
        "The {noun} of {key} is {value}.",
    ),
)
# Reconstruction (autoencoding) examples: the context is asked back whole, so every one of its tokens is a target.
REPEAT = "Repeat the text above word for word."
ANSWER_FORMAT = "restate the question with the value, as the model answers (`The byte vote code is 524619.`)"
_NOUNS = ("number", "word", "code", "label", "key", "token", "name")
# People and places of the trainer's own: the evaluation's babilong uses other names, so nothing is learnt by heart.
_PEOPLE = ("Marta", "Jonas", "Priya", "Kenji", "Amara", "Lucas", "Helga", "Omar", "Rosa", "Viktor", "Nadia", "Pablo")
_PLACES = ("kitchen", "office", "garden", "library", "cellar", "porch", "studio", "pantry", "lobby", "workshop")
_MOVES = ("went to", "walked to", "ran to", "went back to", "headed to")


@dataclass(frozen=True)
class Example:
    context: list[int]
    question: str
    answer: list[int]
    kind: str


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
        if kind < 0.4:
            return str(self.rng.randint(10 ** self.rng.randint(3, 6), 10**7 - 1))
        if kind < 0.6:
            return self.rng.choice(self.words)
        if kind < 0.75:
            return f"{self.rng.choice(self.words)}-{self.rng.choice(self.words)}"
        if kind < 0.9:
            return f"{self.rng.choice(self.words)}-{self.rng.randint(10, 99)}"
        return "-".join(f"{self.rng.getrandbits(4 * n):0{n}x}" for n in (8, 4, 4))

    def planted(self, sentences: list[str], limit: int) -> list[int]:
        """Corpus text of about `limit` tokens with each of `sentences` at its own random sentence boundary."""
        room = limit - sum(len(self.ids(s)) for s in sentences)
        body = self.fit(self.sentences(max(room, 16) * 6), max(room, 8))
        places = sorted(self.rng.randint(0, len(body)) for _ in sentences)
        parts: list[str] = []
        last = 0
        for at, s in zip(places, sentences, strict=True):
            parts += [*body[last:at], s]
            last = at
        return self.ids("".join([*parts, *body[last:]]))

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

    def key(self) -> str:
        joint = self.rng.choice((" ", "-"))
        return f"{self.rng.choice(self.words)}{joint}{self.rng.choice(self.words)}"

    def fact(self, tokens: int) -> Example:
        statement, question, answer = self.rng.choice(_FACTS)
        noun = self.rng.choice(_NOUNS)
        keys = [self.key() for _ in range(1 + (self.rng.random() < 0.3) * self.rng.randint(1, 3))]
        values = [self.value() for _ in keys]
        facts = [
            _first_upper(statement.format(key=k, value=v, noun=noun)) + " " for k, v in zip(keys, values, strict=True)
        ]
        context = self.planted(facts, tokens)  # keys[0] is asked; the others are distractors
        reply = _first_upper(answer.format(key=keys[0], value=values[0], noun=noun))
        return Example(context, question.format(key=keys[0], noun=noun), self.ids(reply), "fact")

    def location(self, tokens: int) -> Example:
        """Where a person went last: their moves among another person's, as in bAbI's first task."""
        person, other = self.rng.sample(_PEOPLE, 2)
        places = self.rng.sample(_PLACES, 3)
        moves = [(person, places[0]), (other, places[1]), (person, places[2])][3 - self.rng.randint(2, 3) :]
        if self.rng.random() < 0.5:
            moves[-1], moves[-2] = moves[-2], moves[-1]
        last = [where for who, where in moves if who == person][-1]
        facts = [f"{who} {self.rng.choice(_MOVES)} the {where}. " for who, where in moves]
        question = f"Where is {person}?" + (" Answer with one location." if self.rng.random() < 0.5 else "")
        return Example(self.planted(facts, tokens), question, self.ids(f"{person} is in the {last}."), "location")

    def quote(self, tokens: int) -> Example:
        body = self.fit(self.sentences(tokens * 6), tokens)
        candidates = [s for s in body if len(s.split()) >= 8] or body
        target = self.rng.choice(candidates).strip()
        words = target.split()
        opening, rest = " ".join(words[:4]), " ".join(words[4:])
        answer = self.ids(rest)[: self.answer_tokens]
        return Example(
            self.ids("".join(body)), f'How does the sentence that begins "{opening}" go on?', answer, "quote"
        )

    def continuation(self, tokens: int) -> Example:
        found = self.sentences(tokens * 8)
        body = self.fit(found, tokens)
        following = found[len(body)] if len(body) < len(found) else found[-1]
        answer = self.ids(following.strip())[: self.answer_tokens]
        return Example(self.ids("".join(body)), "Write the sentence that comes right after the text.", answer, "next")

    def reconstruction(self, tokens: int) -> Example:
        """Corpus text of `tokens` tokens (half of them with a planted fact, so exact values are among the targets)
        whose answer is the text itself: every context token is a target (ICAE-style autoencoding)."""
        if self.rng.random() < 0.5:
            statement = self.rng.choice(_FACTS)[0]
            fact = statement.format(key=self.key(), value=self.value(), noun=self.rng.choice(_NOUNS))
            context = self.planted([_first_upper(fact) + " "], tokens)[:tokens]
        else:
            ids = self.ids("".join(self.sentences(tokens * 8)))
            start = self.rng.randrange(0, max(1, len(ids) - tokens + 1))
            context = ids[start : start + tokens]
        return Example(context, REPEAT, context, "reconstruct")

    def __call__(self, tokens: int | None = None) -> Example:
        """One example with a context of about `tokens` tokens (default: `context_tokens`)."""
        tokens = tokens or self.context_tokens
        pick = self.rng.random()
        if pick < 0.5:
            return self.fact(tokens)
        if pick < 0.65:
            return self.location(tokens)
        return self.quote(tokens) if pick < 0.85 else self.continuation(tokens)


def _first_upper(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
