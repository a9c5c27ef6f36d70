"""BABILong-style tasks: bAbI facts (one, two or three needed together) hidden in real text at sentence boundaries.

bAbI's own data cannot be downloaded here, so the facts are generated the way bAbI's first three tasks are
built. People, places and objects are chosen from names that never occur in the held-out text, so the
answer occurs exactly once in the document: in the supporting facts.
"""

from __future__ import annotations

import random

from engines.types import Task
from evals.tasks import haystack
from evals.tasks.sample import Sample, Tokenizer, depth_for, document_budget, finish, rng_for

PEOPLE = ("Sandra", "Daniel", "Julie", "Emily", "Fred", "Olga", "Tariq", "Ingrid")
PLACES = ("bathroom", "hallway", "bedroom", "garage", "attic", "balcony", "basement", "laundry room")
OBJECTS = ("football", "suitcase", "backpack", "camera", "guitar", "laptop")
MOVES = ("went to", "moved to", "travelled to", "journeyed to")


def _facts(hops: int, rng: random.Random) -> tuple[list[str], str, str]:
    """(facts in story order, question, answer): `hops` facts are needed together to answer."""
    person, other = rng.sample(PEOPLE, 2)
    answer, wrong, decoy = rng.sample(PLACES, 3)
    thing = rng.choice(OBJECTS)
    move = lambda who, where: f"{who} {rng.choice(MOVES)} the {where}."  # noqa: E731
    if hops == 1:  # where is a person: their last move, with another person's move as a distractor
        return [move(person, answer), move(other, wrong)], f"Where is {person}?", answer
    if hops == 2:  # where is an object: who carries it, and where they went
        facts = [f"{person} picked up the {thing}.", move(other, wrong), move(person, answer)]
        return facts, f"Where is the {thing}?", answer
    if hops == 3:  # where is an object: carried there, put down, and the carrier walked on
        facts = [
            f"{person} picked up the {thing}.",
            move(person, answer),
            f"{person} put down the {thing}.",
            move(person, decoy),
            move(other, wrong),
        ]
        return facts, f"Where is the {thing}?", answer
    raise ValueError(f"babilong supports 1, 2 or 3 supporting facts, not {hops}")


def babilong(tok: Tokenizer, length: int, seed: int) -> Sample:
    """Supporting facts: 1, 2 or 3 by seed; they start at the depth grid point, later facts follow in order."""
    rng = rng_for("babilong", length, seed)
    hops = 1 + seed % 3
    facts, asked, answer = _facts(hops, rng)
    question = Task(f"{asked} Answer with one location.", max_answer_tokens=16)
    start = depth_for(seed)  # seeds 0..14 cover every (hops, depth) pair once
    depths = [start] + sorted(start + (1 - start) * rng.random() for _ in facts[1:])
    words = haystack.text_words(rng)
    text = haystack.build(tok, words, list(zip(depths, facts, strict=True)), document_budget(tok, length, question))
    return finish(
        "babilong",
        length,
        seed,
        tok,
        question,
        text,
        (answer,),
        "all",
        depth=start,
        unique=(answer,),
        info={"haystack": "text", "supporting_facts": hops, "facts": facts},
    )
