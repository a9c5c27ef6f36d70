"""Synthetic training data for the memagent update step and its final answer.

One update step is what `memory.memagent` asks the model after every segment: the question, the notes so far
and a segment of text; the target is the extractive update that strategy reads back: every sentence (of the
notes and the segment) that helps answer, copied verbatim, one per line in document order, or NONE when the
segment adds nothing (the strategy then keeps the notes as they are). An answer example is the strategy's
final call: the memory's sentences and the question, with the short answer as the target.

The steps are built like the harness's tasks (evals/tasks: needle sentences, variable chains, bAbI facts, with
the harness's own templates), but never from its held-out material:
- the haystack text and the words that make keys come from corpus files outside `evals.corpus.EVAL_DOCS`;
- seeds start at `EVAL_SEEDS.stop`, so no training seed is an evaluation seed.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engines.base import Message
from engines.prompting import answer_messages
from engines.types import Task
from evals.corpus import EVAL_DOCS, ends_sentence, normalize, words_of
from evals.tasks import EVAL_SEEDS
from evals.tasks.babilong import _facts as babi_facts
from evals.tasks.fitting import fit, insert_at_boundaries
from evals.tasks.haystack import noise_words
from evals.tasks.niah import NEEDLE, _ask_one
from evals.tasks.sample import VALUE_KINDS, value_of
from memory.memagent import NONE, UPDATE_SYSTEM, update_prompt

DEFAULT_CORPUS = Path("/work/shared/data/corpus")
TRAIN_SEED_START = EVAL_SEEDS.stop  # every training seed is outside the evaluation seeds

FAMILIES = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "babilong")
WEIGHTS = (0.2, 0.3, 0.1, 0.2, 0.2)  # multikey gets the most: filing the asked key only is the hard part


Count = Callable[[str], int]


@dataclass(frozen=True)
class Example:
    kind: str  # "update" or "answer"
    family: str
    seed: int
    messages: list[Message]  # the prompt, exactly as memory.memagent sends it
    target: str  # the reply the model is trained to give


def training_documents(corpus: Path = DEFAULT_CORPUS) -> list[Path]:
    """Corpus texts usable for training: every .txt file that is not held out for evaluation."""
    docs = sorted(p for p in corpus.glob("*.txt") if p.name not in EVAL_DOCS)
    if not docs:
        raise FileNotFoundError(f"no training documents (non-evaluation .txt files) in {corpus}")
    return docs


@cache
def _corpus(corpus: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(word stream of the training documents, their plain lower-case words for keys)."""
    texts = [normalize(p.read_text(encoding="utf-8", errors="replace")) for p in training_documents(corpus)]
    joined = "\n\n".join(texts)
    eval_free = sorted(set(re.findall(r"\b[a-z]{4,10}\b", joined)))
    return words_of(joined), tuple(eval_free)


@dataclass
class Facts:
    """The planted sentences of one step: which sit in the notes, which in the segment, which are relevant."""

    notes: list[str]
    segment: list[str]
    relevant: set[str]
    question: Task
    answer: str
    story: list[str]  # every planted sentence of the item (relevant or not) in document order


class StepMaker:
    def __init__(self, count: Count, corpus: Path = DEFAULT_CORPUS) -> None:
        self.count = count
        self.words, self.vocabulary = _corpus(corpus)

    # -- pieces --------------------------------------------------------------------------------------------------

    def key(self, rng: random.Random) -> str:
        return f"{rng.choice(self.vocabulary)}-{rng.choice(self.vocabulary)}"

    def value(self, kind: str, rng: random.Random) -> str:
        return self.key(rng) if kind == "word" else value_of(kind, rng)  # word values from training words only

    def text_words(self, rng: random.Random, n: int) -> Sequence[str]:
        start = rng.randrange(len(self.words) - n - 1)
        while not ends_sentence(self.words[start - 1]):
            start += 1
        return self.words[start : start + n]

    def segment(self, rng: random.Random, filler: Sequence[str], planted: list[str], tokens: int) -> str:
        depths = sorted(rng.random() for _ in planted)
        needles = list(zip(depths, planted, strict=True))
        return fit(lambda k: insert_at_boundaries(filler[:k], needles), self.count, tokens, int(tokens * 0.7),
                   len(filler))  # fmt: skip

    # -- task families (the harness's templates) -------------------------------------------------------------------

    def niah(self, family: str, rng: random.Random) -> Facts:
        kind = rng.choice(VALUE_KINDS if family != "niah_multivalue" else ("number", "word"))
        key = self.key(rng)
        if family == "niah_multivalue":
            values = [self.value(kind, rng) for _ in range(rng.randint(2, 4))]
            asked = [NEEDLE.format(kind=kind, key=key, value=v) for v in values]
            question = Task(f"What are all the special magic {kind}s for {key} mentioned in the text?")
            answer = ", ".join(values)
        else:
            values = [self.value(kind, rng)]
            asked = [NEEDLE.format(kind=kind, key=key, value=values[0])]
            question, answer = _ask_one(kind, key), values[0]
        others = rng.randint(1, 3) if family == "niah_multikey" else 0
        distract = [NEEDLE.format(kind=kind, key=self.key(rng), value=self.value(kind, rng)) for _ in range(others)]
        # Where the asked needles are so far: read earlier (notes), in this segment, or still to come.
        split = rng.randint(0, len(asked))
        where = rng.random()
        notes = asked[:split] if where < 0.3 else []
        now = asked[split:] if where < 0.3 else (asked if where < 0.75 else [])
        return Facts(notes, now + distract, set(asked), question, answer, asked + distract)

    def vt(self, rng: random.Random) -> Facts:
        def chain(value: str) -> tuple[list[str], list[str]]:
            names: list[str] = []
            while len(names) < 5:
                name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
                if name not in names:
                    names.append(name)
            links = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(4)]
            return links, names

        value = str(rng.randint(10_000, 99_999))
        links, names = chain(value)
        a = rng.randint(0, 4)
        b = rng.randint(a, 5)
        distract = chain(str(rng.randint(10_000, 99_999)))[0][: rng.randint(1, 3)] if rng.random() < 0.3 else []
        story = [x for pair in zip(links, distract + [""] * 5, strict=False) for x in pair if x]
        question = Task(
            f"Find all variables that are assigned the value {value} in the text, directly or through other variables."
        )
        now = [s for s in story if s in links[a:b] or s in distract]
        return Facts(links[:a], now, set(links), question, ", ".join(names), story)

    def babilong(self, rng: random.Random) -> Facts:
        hops = rng.randint(1, 3)
        facts, asked, answer = babi_facts(hops, rng)
        person = facts[0].split()[0]  # the asked person (hops 1) or the object's carrier (hops 2, 3)
        relevant = {f for f in facts if f.split()[0] == person}
        a = rng.randint(0, len(facts))
        b = rng.randint(a, len(facts))
        notes = [f for f in facts[:a] if f in relevant]
        return Facts(notes, facts[a:b], relevant, Task(f"{asked} Answer with one location."), answer, facts)

    # -- examples --------------------------------------------------------------------------------------------------

    def facts(self, family: str, rng: random.Random) -> Facts:
        if family.startswith("niah"):
            return self.niah(family, rng)
        return self.vt(rng) if family == "vt" else self.babilong(rng)

    def update(self, family: str, seed: int, segment_tokens: int) -> Example:
        rng = random.Random(f"train:update:{family}:{seed}")
        f = self.facts(family, rng)
        noise = family == "vt" or (family == "niah_single" and rng.random() < 0.5)
        filler = noise_words() if noise else self.text_words(rng, segment_tokens * 2)
        if noise:
            start = rng.randrange(0, 1000) * 5
            filler = filler[start : start + segment_tokens * 2]
        if family.startswith("niah"):
            rng.shuffle(f.segment)  # needles have no order; chains and stories keep theirs
        segment = self.segment(rng, filler, f.segment, segment_tokens)
        in_segment = sorted((s for s in f.segment if s in f.relevant), key=segment.index)
        target = "\n".join(f.notes + in_segment) if in_segment else NONE
        messages = [
            {"role": "system", "content": UPDATE_SYSTEM},
            {"role": "user", "content": update_prompt(f.question.question, "\n".join(f.notes), segment)},
        ]
        return Example("update", family, seed, messages, target)

    def answer(self, family: str, seed: int) -> Example:
        """The final call: a memory of every relevant sentence (at times with one distractor) and the question."""
        rng = random.Random(f"train:answer:{family}:{seed}")
        f = self.facts(family, rng)
        others = [s for s in f.story if s not in f.relevant]
        extra = rng.choice(others) if others and rng.random() < 0.5 else None
        memory = [s for s in f.story if s in f.relevant or s == extra]
        return Example("answer", family, seed, answer_messages("\n".join(memory), f.question), f.answer)


def make_examples(
    count: Count,
    n: int,
    first_seed: int = TRAIN_SEED_START,
    answer_share: float = 0.25,
    segment_tokens: tuple[int, int] = (192, 448),
    corpus: Path = DEFAULT_CORPUS,
) -> list[Example]:
    """n examples from seeds first_seed.. (all outside the evaluation seeds), families mixed by WEIGHTS."""
    if first_seed < TRAIN_SEED_START:
        raise ValueError(f"training seeds start at {TRAIN_SEED_START}: lower seeds are evaluation seeds")
    maker = StepMaker(count, corpus)
    out = []
    for seed in range(first_seed, first_seed + n):
        rng = random.Random(f"train:mix:{seed}")
        family = rng.choices(FAMILIES, WEIGHTS)[0]
        if rng.random() < answer_share:
            out.append(maker.answer(family, seed))
        else:
            out.append(maker.update(family, seed, rng.randint(*segment_tokens)))
    return out
