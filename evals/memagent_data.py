"""Synthetic training data for the memagent update step and its final answer.

One update step is what `memory.memagent` asks the model after every segment: the question, the notes so far
and a segment of text; the target is the extractive update that strategy reads back: every sentence (of the
notes and the segment) that helps answer, copied verbatim, one per line in document order, or NONE when the
segment adds nothing (the strategy then keeps the notes as they are). An answer example is the strategy's
final call: the memory's sentences and the question, with the short answer as the target.

The steps are built like the harness's tasks (evals/tasks: needle sentences, variable chains, bAbI facts, with
the harness's own templates), plus plain-prose facts (`prose`: names, places, dates, quantities and relations,
each written in one of several phrasings and asked in other words, among distractor facts about other subjects
or other facts about the same one), and real documents with the reader's written questions (`written`:
evals/data/reader_train, the segment around a question's evidence or elsewhere in the book, the target the
sentences that hold the evidence), but never from the harness's held-out material:
- the haystack text and the words that make keys and names come from corpus files outside `evals.corpus.HELD_OUT_DOCS`;
- seeds start at `EVAL_SEEDS.stop`, so no training seed is an evaluation seed;
- no word of the project's tests' own planted facts (TEST_WORDS) builds a prose fact.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engines.prompting import answer_messages
from engines.text import ends_sentence, plant, words_of
from engines.types import Task
from evals.corpus import TRAINING_CORPUS, training_texts
from evals.reader_data import HELD_OUT_DOC, document_sentences, document_text, reader_items
from evals.tasks import EVAL_SEEDS
from evals.tasks.babilong import _facts as babi_facts
from evals.tasks.docqa import DocQAItem
from evals.tasks.fitting import fit
from evals.tasks.haystack import noise_words
from evals.tasks.niah import NEEDLE, _ask_one
from evals.tasks.sample import VALUE_KINDS, value_of
from memory.memagent import NONE, UPDATE_SYSTEM, update_prompt
from memory.training import Example

TRAIN_SEED_START = EVAL_SEEDS.stop  # every training seed is outside the evaluation seeds


def holding_evidence(item: DocQAItem) -> list[int]:
    """The indexes of the book's sentences that hold some of the item's evidence, in document order."""
    sentences = document_sentences(item.doc)
    return [i for i, (s, e) in enumerate(sentences) if any(s < b and a < e for a, b in item.spans)]


@cache
def written_items() -> tuple[DocQAItem, ...]:
    """The reader's written questions, less the document held out to measure the adapters."""
    return tuple(i for i in reader_items() if i.doc != HELD_OUT_DOC)


FAMILIES = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "babilong", "prose", "written")
# multikey gets the most of the templated families (filing the asked key only is the hard part); prose facts and
# written questions about real books half, so that the adapter learns to read plain text, not templates alone: the
# adapter trained without `written` kept nothing of real prose for docqa's questions (evidence recall 0.00 at 8K
# and 16K, bench/results/eval-docqa-dev-{8k,16k}-memagent-rag.md).
WEIGHTS = (0.1, 0.15, 0.05, 0.1, 0.1, 0.25, 0.25)

# -- prose facts: natural-language planted facts, many phrasings, asked in other words ------------------------------

# Words of the project's tests' own planted facts (tests/test_memory*.py, test_ask.py, test_router.py,
# test_service.py): never used to build a training fact, so those tests measure reading, not recall.
TEST_WORDS = frozenset({"lighthouse", "keeper", "dog", "biscuit", "magnolia", "harbour", "master", "pepper", "willow",
                        "orla", "venn", "abel", "edmund", "harrow", "brell"})  # fmt: skip

OCCUPATIONS = (
    "miller", "baker", "blacksmith", "ferryman", "schoolmaster", "innkeeper", "shepherd", "carpenter", "weaver",
    "vicar", "potter", "tanner", "cooper", "fisherman", "gardener", "stationmaster", "postmistress", "clockmaker",
    "bookseller", "brewer", "saddler", "chandler", "stonemason", "glassblower", "tailor", "cobbler", "ropemaker",
    "apothecary", "surveyor", "magistrate", "quarryman", "beekeeper", "boatwright", "organist", "printer", "dyer",
    "farrier", "shipwright", "toll collector", "coachman", "washerwoman", "gamekeeper", "lamplighter", "cartographer",
)  # fmt: skip
PETS = ("horse", "cat", "goat", "mare", "boat", "parrot", "donkey", "cow", "hound", "mule", "pony", "spaniel",
        "terrier", "ox", "canary", "barge", "rowing boat", "ferret", "sheepdog", "raven")  # fmt: skip
FIRST_NAMES = (
    "Agnes", "Albert", "Ambrose", "Beatrix", "Cecil", "Clara", "Cornelius", "Dorothea", "Elias", "Eliza", "Ezra",
    "Florence", "Gideon", "Harriet", "Hugo", "Isolde", "Jasper", "Josephine", "Lionel", "Lucinda", "Matthias",
    "Mabel", "Nathaniel", "Ophelia", "Percival", "Rosalind", "Silas", "Theodora", "Tobias", "Ursula", "Vivian",
    "Winifred", "Alaric", "Bertram", "Cressida", "Dorian", "Evangeline", "Fenella", "Gregory", "Honora", "Ignatius",
    "Leopold", "Marigold", "Octavia", "Rupert", "Seraphina", "Thaddeus", "Wilhelmina", "Benedict", "Imogen",
)  # fmt: skip
SURNAMES = (
    "Ashcombe", "Blackwood", "Crane", "Dunmore", "Ellery", "Fairweather", "Greaves", "Hollins", "Ingram", "Jessop",
    "Kettering", "Lockwood", "Marlowe", "Norcott", "Oakley", "Pennington", "Quarrie", "Rowntree", "Sallow",
    "Thackeray", "Underhill", "Vance", "Whitlock", "Yardley", "Abernethy", "Birchall", "Calloway", "Dewhurst",
    "Elsworth", "Fothergill", "Gantry", "Hargreave", "Kinloch", "Lomax", "Merriweather", "Nettleship", "Ormsby",
    "Pickering", "Radcliffe", "Stainton", "Tolliver", "Wetherby",
)  # fmt: skip
TOWN_ENDINGS = ("ton", "bury", "ford", "field", "wick", "mouth", "by", "stead", "bridge", "combe", "ham", "thorpe")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
STOCK = ("sheep", "barrels of cider", "apple trees", "beehives", "chairs", "candles", "hens", "casks of ale",
         "books", "fishing nets", "lanterns", "geese", "pigs", "rose bushes")  # fmt: skip
KIN = ("cousin", "closest friend", "neighbour", "guardian", "apprentice", "landlord", "godparent", "business partner",
       "physician", "tutor", "eldest child", "travelling companion")  # fmt: skip
HIDDEN = ("key", "letter", "map", "ring", "purse", "diary", "pistol", "will", "locket", "ledger")
SPOTS = ("loose floorboard", "kitchen hearth", "third stair", "rain barrel", "old oak tree", "bed in the attic",
         "garden bench", "chapel altar", "stable door", "broken clock", "woodpile", "bottom drawer")  # fmt: skip
COLOURS = ("green", "crimson", "yellow", "pale blue", "bright red", "black", "white", "dark green", "purple",
           "orange", "grey", "sky blue", "deep maroon", "mustard yellow")  # fmt: skip
PLAIN = frozenset("what which who whom whose where when how many much was were did does do is the of a an in on at by "
                  "for to with".split())  # fmt: skip

# Relation: (fact templates, question templates). Slots: {p} a person, {o} an occupation, {t} a thing, {v} the value.
PROSE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "name": (
        ("The {o}'s {t} was called {v}.", "The {o}'s {t} was named {v}.", "The {o} had named the {t} {v}.",
         "Everyone in the village knew the {o}'s {t} as {v}.", "{v} was the name the {o} gave to the {t}.",
         "The {o} always called the {t} {v}.", "The {t} that belonged to the {o} went by the name of {v}.",
         "The {o} owned a {t} by the name of {v}."),
        ("What was the {o}'s {t} called?", "What name did the {o} give the {t}?", "What was the name of the {o}'s {t}?",
         "By what name was the {o}'s {t} known?", "What did the {o} call the {t}?",
         "What was the {t} belonging to the {o} named?"),
    ),
    "born": (
        ("{p} was born in {v}.", "{p} was born in the town of {v}.", "The birthplace of {p} was {v}.",
         "{v} was the town where {p} was born.", "It was in {v} that {p} was born.",
         "{p} came into the world in {v}, a small town by the river."),
        ("Where was {p} born?", "In which town was {p} born?", "What was {p}'s birthplace?",
         "Which town did {p} come from?", "What town saw the birth of {p}?"),
    ),
    "settled": (
        ("In later years {p} settled in {v}.", "{p} moved to {v} and never left.",
         "{p} spent the rest of a long life in {v}.", "{p} eventually made a home in {v}.",
         "After the war {p} went to live in {v}."),
        ("Where did {p} settle?", "In which town did {p} make a home in the end?", "Where did {p} finally live?",
         "Which town did {p} move to for good?", "Where did {p} spend the last years?"),
    ),
    "sailed": (
        ("{p} set sail on {v}.", "{p} sailed from the old port on {v}.", "It was on {v} that {p} set sail.",
         "The ship carrying {p} departed on {v}.", "On {v}, {p} boarded a ship and left the country."),
        ("On what date did {p} set sail?", "When did {p} leave by ship?",
         "What was the date of {p}'s departure by sea?", "On which day did {p} sail away?",
         "When did the ship carrying {p} leave?"),
    ),
    "married": (
        ("{p} was married on {v}.", "The wedding of {p} took place on {v}.", "{p} got married on {v}.",
         "On {v}, {p} was married in the parish church.", "{p} and the chosen partner wed on {v}."),
        ("When was {p} married?", "On what date did {p}'s wedding take place?", "What was the date of {p}'s wedding?",
         "When did {p} get married?", "On which day did {p} wed?"),
    ),
    "count": (
        ("The {o} owned exactly {v} {t}.", "The {o} kept {v} {t} behind the house.",
         "There were {v} {t} in the {o}'s care.", "The {o} counted {v} {t} that spring.",
         "In all, the {o} had {v} {t}.", "The {o} was the owner of {v} {t}."),
        ("How many {t} did the {o} have?", "What number of {t} belonged to the {o}?", "How many {t} did the {o} own?",
         "How many {t} were kept by the {o}?", "What was the count of the {o}'s {t}?"),
    ),
    "kin": (
        ("{p}'s {t} was {v}.", "{v} was {p}'s {t}.", "{p} had a {t} named {v}.", "{p} had only one {t}, {v}.",
         "The {t} of {p} was called {v}."),
        ("Who was {p}'s {t}?", "What was the name of {p}'s {t}?", "Whom did {p} have as a {t}?",
         "Who was the {t} of {p}?", "What was {p}'s {t} called?"),
    ),
    "employer": (
        ("{p} worked for {v} for many years.", "{p} was employed by {v}.", "{v} employed {p}.",
         "For a decade {p} was in the service of {v}.", "{p} took a position with {v} and stayed there."),
        ("Who employed {p}?", "For whom did {p} work?", "Who was {p}'s employer?", "Who gave {p} work?",
         "In whose service was {p}?"),
    ),
    "hidden": (
        ("The {o} hid the {t} under the {v}.", "The {t} was hidden by the {o} beneath the {v}.",
         "Under the {v} the {o} had hidden the {t}.", "The {o} kept the {t} under the {v}, where nobody looked.",
         "The {o} put the {t} away under the {v}."),
        ("Where did the {o} hide the {t}?", "Where was the {o}'s {t} hidden?",
         "Where was the {t} concealed by the {o}?", "Where could the {o}'s {t} be found?",
         "In what place did the {o} put the {t}?"),
    ),
    "colour": (
        ("The door of the {o}'s house was painted {v}.", "The {o} painted the front door {v}.",
         "The {o}'s front door was {v}.", "A {v} door marked the house of the {o}.",
         "The {o} chose {v} paint for the front door."),
        ("What colour was the door of the {o}'s house?", "What colour had the {o} painted the front door?",
         "Which colour was the {o}'s front door?", "What was the colour of the {o}'s door?"),
    ),
    "age": (
        ("{p} was {v} years old when the war ended.", "When the war ended, {p} was {v} years old.",
         "{p} had reached the age of {v} by the end of the war.", "At the end of the war {p} was {v}."),
        ("How old was {p} when the war ended?", "At what age did {p} see the war end?",
         "What was {p}'s age at the end of the war?", "How many years old was {p} at the war's end?"),
    ),
}  # fmt: skip


def _article(sentence: str) -> str:
    """A capital first letter, and "an" before a vowel."""
    sentence = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", sentence)
    return sentence[0].upper() + sentence[1:]


def reworded(question: str, fact: str) -> bool:
    """The question has a content word the fact lacks: it asks in other words, not the fact turned around."""
    words = lambda s: set(re.findall(r"[a-z]+", s.lower()))  # noqa: E731
    return bool(words(question) - words(fact) - PLAIN)


Count = Callable[[str], int]


@cache
def _corpus(corpus: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(word stream of the training documents, their plain lower-case words for keys)."""
    joined = "\n\n".join(training_texts(corpus))
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
    def __init__(self, count: Count, corpus: Path = TRAINING_CORPUS) -> None:
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

    def segment(
        self, rng: random.Random, filler: Sequence[str], planted: list[str], tokens: int, paragraphs: bool = False
    ) -> str:
        depths = sorted(rng.random() for _ in planted)
        needles = list(zip(depths, planted, strict=True))
        insert = lambda k: plant(filler[:k], needles, paragraphs)  # noqa: E731
        return fit(insert, self.count, tokens, int(tokens * 0.7), len(filler))

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

    # -- prose facts -------------------------------------------------------------------------------------------------

    def word(self, rng: random.Random, longest: int = 8) -> str:
        while True:
            w = rng.choice(self.vocabulary)
            if len(w) <= longest and w not in TEST_WORDS:
                return w

    def person(self, rng: random.Random) -> str:
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"

    def prose_value(self, relation: str, rng: random.Random) -> str:
        if relation == "name":  # a name made of one or two training words: "Tallow", "Ember Gravel"
            return " ".join(self.word(rng).capitalize() for _ in range(rng.choice((1, 2, 2))))
        if relation in ("born", "settled"):
            return self.word(rng, 7).capitalize() + rng.choice(TOWN_ENDINGS)
        if relation in ("sailed", "married"):
            day, month, year = rng.randint(1, 28), rng.choice(MONTHS), rng.randint(1700, 1960)
            return f"{day} {month} {year}" if rng.random() < 0.5 else f"{month} {day}, {year}"
        if relation == "count":
            return str(rng.randint(2, 400))
        if relation == "age":
            return str(rng.randint(6, 90))
        if relation == "kin":
            return self.person(rng) if rng.random() < 0.6 else rng.choice(FIRST_NAMES)
        if relation == "employer":
            return self.person(rng) if rng.random() < 0.7 else f"the {rng.choice(SURNAMES)} brothers"
        if relation == "hidden":
            return rng.choice(SPOTS)
        return rng.choice(COLOURS)  # colour

    def prose_subject(self, relation: str, rng: random.Random) -> dict[str, str]:
        """The slots that name what a fact is about: a person, or an occupation and (for some) a thing."""
        things = {"name": PETS, "count": STOCK, "kin": KIN, "hidden": HIDDEN}.get(relation, ("",))
        return {"p": self.person(rng), "o": rng.choice(OCCUPATIONS), "t": rng.choice(things)}

    def prose_fact(self, relation: str, subject: dict[str, str], value: str, rng: random.Random) -> str:
        return _article(rng.choice(PROSE[relation][0]).format(**subject, v=value))

    def prose(self, rng: random.Random) -> Facts:
        """A plain-language fact (a name, place, date, quantity or relation) among distractors: the same kind of
        fact about someone else, or another fact about the same subject. The question is worded differently."""
        relation = rng.choice(sorted(PROSE))
        subject, value = self.prose_subject(relation, rng), self.prose_value(relation, rng)
        fact = self.prose_fact(relation, subject, value, rng)
        questions = [q for q in PROSE[relation][1] if reworded(q.format(**subject), fact)]
        question = _article(rng.choice(questions).format(**subject))
        answer = f"under the {value}" if relation == "hidden" else value
        by_person = relation in ("born", "settled", "sailed", "married", "kin", "employer", "age")
        distract: list[str] = []
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.5:  # the same kind of fact about another subject
                other, rel = self.prose_subject(relation, rng), relation
                key = ("p",) if by_person else ("o", "t")
                if all(other[k] == subject[k] for k in key):
                    continue
            else:  # another kind of fact about the same subject
                rel = rng.choice([r for r in PROSE if r != relation and (r in ("born", "settled", "sailed", "married",
                                  "kin", "employer", "age")) == by_person])  # fmt: skip
                other = {**self.prose_subject(rel, rng), "p": subject["p"], "o": subject["o"]}
            sentence = self.prose_fact(rel, other, self.prose_value(rel, rng), rng)
            if answer not in sentence and sentence not in distract:
                distract.append(sentence)
        story = [fact, *distract]
        rng.shuffle(story)
        where = rng.random()
        notes = [fact] if where < 0.25 else []
        now = [fact] if 0.25 <= where < 0.7 else []
        return Facts(notes, [s for s in story if s in now or s in distract], {fact}, Task(question), answer, story)

    # -- examples --------------------------------------------------------------------------------------------------

    def facts(self, family: str, rng: random.Random) -> Facts:
        if family.startswith("niah"):
            return self.niah(family, rng)
        if family == "prose":
            return self.prose(rng)
        return self.vt(rng) if family == "vt" else self.babilong(rng)

    def written_update(self, seed: int, segment_tokens: int) -> Example:
        """A segment of a real book and a question written about it: around its evidence (two times in three) the
        target is every sentence of the segment that holds some of the evidence, elsewhere NONE."""
        rng = random.Random(f"train:update:written:{seed}")
        item = rng.choice(written_items())
        text = document_text(item.doc)
        sentences = document_sentences(item.doc)
        evidence = holding_evidence(item)
        if evidence and rng.random() < 2 / 3:
            anchor = rng.choice(evidence)
        else:  # elsewhere: no sentence within a segment's reach of the evidence
            far = [i for i in range(len(sentences)) if all(abs(i - j) > 200 for j in evidence)]
            anchor = rng.choice(far)
        lo = hi = anchor
        before = rng.random()  # where in the segment the anchor sits
        while self.count(text[sentences[lo][0] : sentences[hi][1]]) < segment_tokens:
            if (rng.random() < before and lo > 0) or hi == len(sentences) - 1:
                lo -= 1
            else:
                hi += 1
        segment = text[sentences[lo][0] : sentences[hi][1]]
        kept = [text[s:e] for i, (s, e) in enumerate(sentences) if lo <= i <= hi and i in evidence]
        messages = [
            {"role": "system", "content": UPDATE_SYSTEM},
            {"role": "user", "content": update_prompt(item.question, "", segment)},
        ]
        return Example("update", "written", seed, messages, "\n".join(kept) if kept else NONE)

    def written_answer(self, seed: int) -> Example:
        """The final call on a written question: the sentences that hold its evidence, at times with one more."""
        rng = random.Random(f"train:answer:written:{seed}")
        item = rng.choice([i for i in written_items() if i.spans])
        text = document_text(item.doc)
        sentences = document_sentences(item.doc)
        held = [sentences[i] for i in holding_evidence(item)]
        if rng.random() < 0.5:
            held = sorted([*held, rng.choice(sentences)])
        memory = "\n".join(text[s:e] for s, e in held)
        return Example("answer", "written", seed, answer_messages(memory, Task(item.question)), item.answers[0])

    def update(self, family: str, seed: int, segment_tokens: int) -> Example:
        if family == "written":
            return self.written_update(seed, segment_tokens)
        rng = random.Random(f"train:update:{family}:{seed}")
        f = self.facts(family, rng)
        noise = family == "vt" or (family == "niah_single" and rng.random() < 0.5)
        filler = noise_words() if noise else self.text_words(rng, segment_tokens * 2)
        if noise:
            start = rng.randrange(0, 1000) * 5
            filler = filler[start : start + segment_tokens * 2]
        if family.startswith("niah"):
            rng.shuffle(f.segment)  # needles have no order; chains and stories keep theirs
        paragraphs = family == "prose" and rng.random() < 0.5  # a fact alone in its paragraph, or inside one
        segment = self.segment(rng, filler, f.segment, segment_tokens, paragraphs)
        in_segment = sorted((s for s in f.segment if s in f.relevant), key=segment.index)
        target = "\n".join(f.notes + in_segment) if in_segment else NONE
        messages = [
            {"role": "system", "content": UPDATE_SYSTEM},
            {"role": "user", "content": update_prompt(f.question.question, "\n".join(f.notes), segment)},
        ]
        return Example("update", family, seed, messages, target)

    def answer(self, family: str, seed: int) -> Example:
        """The final call: a memory of every relevant sentence (at times with one distractor) and the question."""
        if family == "written":
            return self.written_answer(seed)
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
    corpus: Path = TRAINING_CORPUS,
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
