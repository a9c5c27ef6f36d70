"""memagent and rag on the real model, the real embedder and real Qdrant (local mode)."""

from __future__ import annotations

import itertools
import sqlite3
import sys
from dataclasses import replace

import pytest

from engines.grounding import complete_fragments
from engines.lexical import LexicalScorer, words
from engines.text import paragraphs_of, plant
from engines.types import Answer, Document, Task
from memory.memagent import ADAPTERS, MemAgent, MemAgentConfig, MemAgentInputError, choose_mode, snap
from memory.rag import UNITS, Rag, RagConfig, RagInputError
from memory.spans import split_sentences
from tests.conftest import planted_document

FACT = "The lighthouse keeper's dog was called Biscuit Magnolia."
QUESTION = "What was the lighthouse keeper's dog called?"


def long_document(engine, fact: str, tokens: int, depth: float) -> Document:
    """About `tokens` tokens of Walden with `fact` planted at a paragraph boundary near `depth`."""
    return Document(planted_document(engine, fact, tokens, depth, source="walden_long.txt"))


@pytest.fixture(scope="module")
def doc16k(native_engine) -> Document:
    return long_document(native_engine, FACT, 16_000, 0.6)


@pytest.fixture
def rag(tmp_path) -> Rag:
    """rag's unit mode over a whole-document index (memory.rag.UNITS): what the index tests need."""
    return Rag(RagConfig(qdrant_path=tmp_path / "qdrant", **UNITS))


# -- pure pieces ---------------------------------------------------------------------------------------------------


def test_snap_keeps_only_document_sentences():
    text = (
        "The sky was grey. The special code for the red door is 4817263. "
        "The special code for the blue gate is 5550123. Nothing else happened here."
    )
    sources = split_sentences(text)
    question = "What is the special code for the red door?"
    lines = [
        "- The special code for the red door is 4817263.",  # a copy: kept
        "The special code for the red door is 4817263.",  # repeated: kept once
        "The special code for the red door is 1.",  # the question reworded with an invented value: dropped
        "The special code for the red door is 5550123.",  # one needle's key with another's value: dropped
        "the blue gate is 5550123",  # a partial copy that adds what the question lacks: kept
        "The answer is probably the red door, I think.",  # not in the text: dropped
    ]
    picked = snap(lines, text, sources, question)
    assert [text[s:e] for s, e in picked] == [
        "The special code for the red door is 4817263.",
        "The special code for the blue gate is 5550123.",
    ]
    # An answer instead of a copy is filed under the sentence it was read from, and only under that one.
    asked = "What is the special code for the red door mentioned in the text?"
    answers = ["The special code for the red door mentioned in the text is 4817263.", "The red door is 5550123."]
    picked = snap(answers, text, sources, asked)
    assert [text[s:e] for s, e in picked] == ["The special code for the red door is 4817263."]


# -- memagent ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_memagent_answers_a_planted_fact_in_16k_tokens_through_the_job_graph(native_engine, doc16k, strategies):
    from workflows.graph import run_job

    assert native_engine.count_tokens(doc16k.text) > native_engine.max_context  # the full strategy cannot read it
    seen: list[tuple[int, int, str]] = []
    result = run_job(
        doc16k,
        [Task(QUESTION)],
        native_engine,
        strategy="memagent",
        progress=lambda *a: seen.append(a),
        strategies=strategies,
    )
    answer = result.answers[0]
    assert "biscuit" in answer.text.lower()
    assert any(FACT in e.text for e in answer.evidence)  # the remembered sentence is the evidence
    segments = answer.details["segments"]
    assert segments >= 5 and answer.cost.calls == segments + 1
    assert [d for d, _, m in seen if m.startswith("read segment")] == list(range(1, segments + 1))
    assert answer.cost.tokens_read > native_engine.count_tokens(doc16k.text)


class Crash(RuntimeError):
    """A worker dying mid-job."""


def crash_and_resume(engine, doc: Document, task: Task, strategies, db, thread_id: str) -> Answer:
    """memagent on `doc` through the job graph with checkpoints in `db`, killed while it reports segment 2, then run
    again on a new connection (as a restarted worker). Checks that the resumed run reads segment 2 on and never
    segment 1, keeps the trace of the steps before the crash and the memory's cost; returns its answer."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from workflows.graph import run_job

    def crash_after_two(done: int, total: int, message: str) -> None:
        if message.startswith("read segment") and done == 2:
            raise Crash("worker died")

    def run(progress, conn):
        return run_job(doc, [task], engine, "memagent", progress, SqliteSaver(conn), thread_id, strategies=strategies)

    with sqlite3.connect(db, check_same_thread=False) as conn, pytest.raises(Crash):
        run(crash_after_two, conn)
    resumed: list[str] = []
    with sqlite3.connect(db, check_same_thread=False) as conn:  # a new connection: as a restarted worker
        answer = run(lambda d, t, m: resumed.append(m), conn).answers[0]
    total = answer.details["segments"]
    # The crash hit while reporting segment 2, so segment 2 is read again; segment 1 never is.
    reads = [m for m in resumed if m.startswith("read segment")]
    assert reads == [f"read segment {i}/{total}" for i in range(2, total + 1)]
    assert [step["segment"] for step in answer.details["trace"]] == list(range(total))  # kept from before the crash
    assert answer.cost.calls == total + 1  # the memory's cost survives the restart
    return answer


def test_memagent_resumes_after_a_crash_without_rereading_finished_segments(native_engine, tmp_path, strategies):
    # Small segments keep this quick on a CPU; the loop and the checkpoints are the same at any size.
    strategies = {**strategies, "memagent": MemAgent(MemAgentConfig(segment_tokens=512, memory_tokens=96))}
    doc = long_document(native_engine, FACT, 1800, 0.8)
    task = Task(QUESTION, max_answer_tokens=24)
    answer = crash_and_resume(native_engine, doc, task, strategies, tmp_path / "checkpoints.sqlite", "job-1")
    assert answer.details["segments"] >= 4
    assert "biscuit" in answer.text.lower()


def test_memagent_auto_mode_is_extractive_for_the_small_default_and_prompted_for_other_models(native_engine, tmp_path):
    from engines import EngineConfig, create_engine

    assert "smollm2" in ADAPTERS
    picks = {
        ("smollm2", "auto"): "extractive",  # its adapter is listed
        ("smollm2", "none"): "extractive",  # the small default, adapter or not
        ("/models/SmolLM2-135M-Instruct", "auto"): "extractive",  # a converted copy or a served name
        ("Qwen/Qwen2.5-7B-Instruct", "auto"): "prompted",
        ("/srv/models/llama-3.1-8b", "none"): "prompted",
        ("/srv/models/llama-3.1-8b", str(tmp_path / "my-adapter")): "extractive",  # an adapter trained for it
    }
    for (model, adapter), mode in picks.items():
        assert choose_mode(model, "auto", adapter)[0] == mode, (model, adapter)
    assert choose_mode("Qwen/Qwen2.5-7B-Instruct", "extractive", "auto")[0] == "extractive"  # set, not chosen
    assert MemAgent().mode(native_engine)[0] == "extractive"
    # A real engine whose model has no adapter of ours and is not the small default (the same weights, renamed).
    (tmp_path / "reader-7b").symlink_to(native_engine.path, target_is_directory=True)
    other = create_engine(
        EngineConfig(kind="native", model=str(tmp_path / "reader-7b"), home=native_engine.config.home)
    )
    agent = MemAgent(MemAgentConfig(segment_tokens=400, memory_tokens=16))  # one short segment: the choice is shown
    doc = long_document(native_engine, FACT, 300, 0.5)
    answer = agent.run(doc, [Task(QUESTION, max_answer_tokens=8)], other, lambda *a: None)[0]
    assert answer.details["mode"] == "prompted" and "no memagent adapter" in answer.details["why"]
    assert answer.details["adapter"] is None and answer.cost.calls == answer.details["segments"] + 1


def test_memagent_prompted_mode_reads_with_memagents_prompts_and_resumes(native_engine, tmp_path, monkeypatch):
    from engines.settings import Settings
    from workflows.registry import build_strategies

    monkeypatch.setenv("TOME_MEMAGENT_MODE", "prompted")
    strategies = build_strategies(Settings())
    configured = strategies["memagent"].config
    assert configured.mode == "prompted"
    # Small segments and memory keep this quick on a CPU; the loop and the checkpoints are the same at any size.
    strategies["memagent"] = MemAgent(replace(configured, segment_tokens=320, memory_tokens=32))
    doc = long_document(native_engine, FACT, 1000, 0.8)
    task = Task(QUESTION, max_answer_tokens=12)
    answer = crash_and_resume(native_engine, doc, task, strategies, tmp_path / "checkpoints.sqlite", "job-p")
    details = answer.details
    assert details["segments"] >= 3 and details["mode"] == "prompted" and "TOME_MEMAGENT_MODE" in details["why"]
    assert details["adapter"] is None  # the extractive adapter never reads MemAgent's prompts
    trace = details["trace"]
    # The memory is free text, overwritten each segment and bounded by the update's generation limit.
    assert all(step["tokens"] <= 32 for step in trace)
    assert isinstance(details["memory"], str) and native_engine.count_tokens(details["memory"]) <= 32
    assert {step["action"] for step in trace} <= {"rewrite", "kept: empty reply"}
    # Evidence, where any: whole sentences of the document that the memory's sentences copy or answer from.
    sentences = {doc.text[s:e] for s, e in split_sentences(doc.text)}
    assert all(e.text == doc.text[e.start : e.end] and e.text in sentences for e in answer.evidence)


def test_memagent_rejects_bad_input_clearly(native_engine):
    agent = MemAgent()
    with pytest.raises(MemAgentInputError, match="empty"):
        agent.run(Document("   "), [Task(QUESTION)], native_engine, lambda *a: None)
    long_question = Task("Why? " * 5000)
    assert not agent.fits(50_000, [long_question], native_engine)
    with pytest.raises(MemAgentInputError, match="shorten the question"):
        agent.run(Document("Some text."), [long_question], native_engine, lambda *a: None)


# -- rag -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rag_answers_a_planted_fact_in_16k_tokens_and_reuses_its_index(native_engine, doc16k, rag):
    first = rag.run(doc16k, [Task(QUESTION)], native_engine, lambda *a: None)[0]
    assert "biscuit" in first.text.lower()
    assert first.details["index"] == "built"
    assert any(FACT in e.text for e in first.evidence)
    assert first.evidence == sorted(first.evidence, key=lambda e: e.start)  # document order
    read = sum(native_engine.count_tokens(e.text) for e in first.evidence)
    # One reading call per retrieved unit (the memagent extractor, where its adapter is present), then the answer.
    assert read <= native_engine.max_context and first.cost.calls == len(first.details["notes"]) + 1
    again = rag.run(doc16k, [Task("Where did the author build his house?")], native_engine, lambda *a: None)[0]
    assert again.details["index"] == "reused"


def test_rag_rebuilds_an_index_built_by_another_embedder(native_engine, rag):
    from memory.index import collection_name, open_client

    doc = long_document(native_engine, FACT, 3000, 0.5)
    task = Task(QUESTION)

    def retrieve():
        return rag.retrieve(doc, [task], native_engine, lambda *a: None)[0]

    assert retrieve().index == "built"
    assert retrieve().index == "reused"
    client = open_client(rag.config.qdrant_path, None)
    # What an index made by a different model looks like: its metadata names that model and its size.
    client.update_collection(
        collection_name(doc.content_hash),
        metadata={"embedder": "bge-large-en", "dim": 1024, "passage_tokens": 510, "version": 1, "complete": True},
    )
    rebuilt = retrieve()
    assert rebuilt.index.startswith("rebuilt (built with 'bge-large-en'")
    assert any(s <= doc.text.index(FACT) < e for s, e in rebuilt.units)  # the rebuilt index finds the fact
    assert retrieve().index == "reused"
    # A build that died half-way (metadata never marked complete) is rebuilt too.
    client.update_collection(collection_name(doc.content_hash), metadata={"complete": False})
    assert retrieve().index == "rebuilt (incomplete)"


def test_rag_reads_a_clear_match_alone_and_answers_from_it(native_engine, tmp_path):
    doc = long_document(native_engine, FACT, 6000, 0.5)
    at = doc.text.index(FACT)
    focused = Rag(RagConfig(qdrant_path=tmp_path / "qdrant", **UNITS))
    answer = focused.run(doc, [Task(QUESTION)], native_engine, lambda *a: None)[0]
    assert len(answer.evidence) == 1 and answer.evidence[0].start <= at < answer.evidence[0].end
    assert "biscuit" in answer.text.lower()
    # The memory agent's extractor read the retrieved window and kept the fact's sentence; the answer came from it.
    assert answer.details["notes"] and answer.evidence[0].text.strip() == FACT
    # Without it the model reads the window itself, and the evidence is the whole window.
    direct = Rag(RagConfig(qdrant_path=tmp_path / "qdrant", notes=False, **UNITS))
    read = direct.run(doc, [Task(QUESTION)], native_engine, lambda *a: None)[0]
    assert not read.details["notes"] and FACT in read.evidence[0].text and len(read.evidence[0].text) > 2 * len(FACT)
    best, second = (s for *_, s in answer.details["ranked"][:2])
    assert best - second > focused.config.focus_margin  # why it read one unit: the others scored far below
    # Without the margin the same index fills the read budget with units that do not hold the fact.
    filled = Rag(RagConfig(qdrant_path=tmp_path / "qdrant", focus_margin=None, **UNITS))
    units = filled.retrieve(doc, [Task(QUESTION)], native_engine, lambda *a: None)[0].units
    assert len(units) >= 3 and sum(s <= at < e for s, e in units) == 1


def test_lexical_score_weighs_rare_question_words_and_ignores_absent_ones():
    assert words("The special magic WORDS for injury-incense.") == {
        "the",
        "special",
        "magic",
        "word",
        "for",
        "injury",
        "incense",
    }
    passages = [
        "The dog barked at the moon all night.",
        "Its passphrase is lantern-meadow, and the passphrase for quill-orchard is older.",
        "The moon was full and the dog slept.",
        "An orchard of old trees stood by the road.",
    ]
    scores = LexicalScorer(passages).scores("What is the passphrase for quill-orchard?")
    # Every question word the document holds is in passage 1 ("what" occurs nowhere and does not count).
    assert scores[1] == pytest.approx(1.0)
    assert scores[3] > scores[0] == scores[2]  # "orchard" is rarer than "the", which three passages share
    assert all(0.0 <= x <= 1.0 for x in scores)
    assert LexicalScorer(passages).scores("Who wrote zyzzyva?") == [0.0] * 4  # no shared word: no lexical signal


def test_rag_hybrid_score_lifts_a_rare_key_clear_of_the_rest(native_engine, tmp_path):
    fact = "The passphrase for quill-orchard is: lantern-meadow."
    doc = long_document(native_engine, fact, 6000, 0.3)
    at, task = doc.text.index(fact), Task("What is the passphrase for quill-orchard?")

    def retrieve(weight: float):
        config = RagConfig(qdrant_path=tmp_path / "qdrant", **{**UNITS, "lexical_weight": weight})
        return Rag(config).retrieve(doc, [task], native_engine, lambda *a: None)[0]

    dense, hybrid = retrieve(0.0), retrieve(0.3)
    for r in (dense, hybrid):
        (start, end), _ = r.ranked[0]
        assert start <= at < end  # both rank the fact's unit first...
    lead = [r.ranked[0][1] - r.ranked[1][1] for r in (dense, hybrid)]
    assert lead[1] > lead[0] + 0.1  # ...but the fact's unit gains most of the weight, the others little
    # So it is read alone, cut to the passages around the fact (about focus_tokens) inside its unit.
    [(start, end)], (unit_start, unit_end) = hybrid.units, hybrid.ranked[0][0]
    assert unit_start <= start <= at < end <= unit_end and (start, end) != (unit_start, unit_end)
    assert native_engine.count_tokens(doc.text[start:end]) <= RagConfig().focus_tokens + 16


def test_complete_fragments_restores_cut_off_copies_only():
    source = "The code for the north gate is insolvent-musing. The word unmentioned is here. He walked, walking."
    question = "What is the code for the north gate mentioned in the text?"
    text, completed = complete_fragments('The code mentioned in the text is "solvent-musing".', source, question)
    assert text == 'The code mentioned in the text is "insolvent-musing".'  # "mentioned" is the question's word
    assert completed == [("solvent-musing", "insolvent-musing")]
    assert complete_fragments("He wal there.", source) == ("He wal there.", [])  # too short a piece
    assert complete_fragments("He walk there.", source) == ("He walk there.", [])  # two source words start so
    assert complete_fragments("He walki there.", source) == ("He walking there.", [("walki", "walking")])
    # A piece left out inside a word, as in a UUID's group or a compound key's first half.
    inner = complete_fragments("It is inspect-relish.", "The key is inspector-relish, not the inspector.")
    assert inner == ("It is inspector-relish.", [("inspect-relish", "inspector-relish")])
    assert complete_fragments("He walkes there.", source) == ("He walkes there.", [])  # a changed letter is no drop
    assert complete_fragments("The gate is 4817.", source) == ("The gate is 4817.", [])  # nothing to complete
    uuid = "c7287c3f-661f-419b-a609-62e6fd441444"  # both ends dropped (seen at 128K): the middle of one long word
    cut = complete_fragments("It is 7287c3f-661f-419b-a609-62e6fd4414.", f"The code is: {uuid}. The sun is up.")
    assert cut == (f"It is {uuid}.", [("7287c3f-661f-419b-a609-62e6fd4414", uuid)])
    assert complete_fragments("It is alkin.", "The walking man.")[1] == []  # a short middle proves nothing
    # One short piece miscopied in an identifier-like word (seen at 128K): replaced only by a unique match.
    keys = "The word is needy-west, said the west-wind, at 2285850 feet."
    assert complete_fragments("It is dear-west.", keys) == ("It is needy-west.", [("dear-west", "needy-west")])
    assert complete_fragments("At 2285859 feet.", keys) == ("At 2285850 feet.", [("2285859", "2285850")])
    assert complete_fragments("It is dear-rain.", keys)[1] == []  # shares no start or end with a source word
    assert complete_fragments("It is dear-west.", keys + " Or sandy-west.")[1] == []  # two words match: no guess
    assert complete_fragments("He walkes there.", "He walked.")[1] == []  # a plain word: no identifier
    uuid, miscopy = "a7e344c5-3f18-4111-9672-e028d530fc64", "3f184c5-3f18-4111-9672-e028d530fc6"  # two pieces off
    assert complete_fragments(f"It is {miscopy}.", f"Key {uuid}; 1936805.") == (f"It is {uuid}.", [(miscopy, uuid)])


def test_rag_rejects_bad_input_clearly(native_engine, rag):
    with pytest.raises(RagInputError, match="empty"):
        rag.run(Document(""), [Task(QUESTION)], native_engine, lambda *a: None)
    long_question = Task("Why? " * 5000)
    assert not rag.fits(50_000, [long_question], native_engine)
    with pytest.raises(RagInputError, match="shorten the question"):
        rag.run(Document("Some text."), [long_question], native_engine, lambda *a: None)


def test_router_picks_a_memory_strategy_when_the_document_does_not_fit(native_engine, strategies):
    from workflows.router import choose_strategy

    route = choose_strategy("auto", 100_000, [Task(QUESTION)], native_engine, strategies=strategies)
    assert route.strategy in {"rag", "memagent", "mapreduce"} and route.strategy != "full"
    summary = choose_strategy(
        "auto", 100_000, [Task("Summarize the book.", kind="summary")], native_engine, strategies=strategies
    )
    assert summary.strategy not in {"rag", "full"}  # retrieval does not summarise; the book does not fit


def test_rag_covers_each_rare_key_of_a_question_that_names_several(native_engine, tmp_path):
    keys = {"quill-orchard": 4417, "amber-tunnel": 9023, "velvet-harbor": 3318, "copper-meadow": 7751}
    units = paragraphs_of(long_document(native_engine, "", 12_000, 0.5).text)
    n = len(units)
    facts = [  # one fact near 15%, 40%, 65% and 90% of the paragraphs
        (int((n + i) * (0.15 + 0.25 * i)) / n, f"One of the special magic numbers for {key} is: {value}.")
        for i, (key, value) in enumerate(keys.items())
    ]
    doc = Document(plant(units, facts, paragraphs=True))
    task = Task("What are the special magic numbers for " + ", ".join(keys) + " mentioned in the provided text?")

    def read(cover_df: int) -> str:
        config = RagConfig(qdrant_path=tmp_path / "qdrant", cover_df=cover_df, **UNITS)
        units = Rag(config).retrieve(doc, [task], native_engine, lambda *a: None)[0].units
        assert units == sorted(units) and all(a[1] < b[0] for a, b in itertools.pairwise(units))  # no text twice
        assert sum(native_engine.count_tokens(doc.text[s:e]) for s, e in units) <= 3072 + 64
        return "\n".join(doc.text[s:e] for s, e in units)

    covered, plain = read(2), read(0)
    assert all(str(v) in covered for v in keys.values())
    assert not all(str(v) in plain for v in keys.values())  # the best units alone hold three keys at most


def test_bm25_matches_other_forms_of_the_question_words():
    from engines.lexical import BM25Scorer

    passages = [
        "Mr. Collins was not a sensible man, and the deficiency of nature had been but little assisted.",
        "Charlotte Lucas accepted him, and they were married in the church at Hunsford.",
        "The weather was fine and the walk to Meryton was pleasant.",
    ]
    scores = BM25Scorer(passages).scores("Whom does Mr. Collins marry?")
    assert scores[1] > scores[2] and scores[0] == pytest.approx(1.0)  # "marry" finds "married"; "Collins" is rarer
    assert all(0.0 <= x <= 1.0 for x in scores)
    assert BM25Scorer(passages).scores("zyzzyva?") == [0.0] * 3
    assert "llvmlite" not in sys.modules  # numba stays out: an in-process vLLM engine can still start


def test_rag_windows_read_around_the_best_passage_and_a_second_round_finds_the_other_fact(native_engine, tmp_path):
    first = "The harbour master's niece was called Odile Vantongeren."
    second = "Odile Vantongeren later kept a bakery on the Quai des Brumes."
    paragraphs = long_document(native_engine, "", 9000, 0.5).text.split("\n\n")
    third = len(paragraphs) // 3
    parts = [*paragraphs[:third], first, *paragraphs[third : 2 * third], second, *paragraphs[2 * third :]]
    doc = Document("\n\n".join(parts))
    task = Task("Where did the harbour master's niece end up working?")  # names neither her nor the bakery

    def read(second_round: int) -> list[tuple[int, int]]:
        config = RagConfig(
            qdrant_path=tmp_path / "qdrant",
            lexical="bm25",
            lexical_weight=1.0,
            windows=1,
            window_tokens=128,
            second_round=second_round,
        )
        return Rag(config).retrieve(doc, [task], native_engine, lambda *a: None)[0].units

    def holds(units: list[tuple[int, int]], fact: str) -> bool:
        at = doc.text.index(fact)
        return any(s <= at < e for s, e in units)

    one, two = read(0), read(1)
    assert len(one) == 1 and native_engine.count_tokens(doc.text[one[0][0] : one[0][1]]) <= 160
    assert holds(one, first) and not holds(one, second)
    assert holds(two, first) and holds(two, second)  # asked again with her name, the bakery's passage ranks


def test_rag_reads_more_of_a_document_for_a_reader_with_more_context(native_engine, tmp_path, monkeypatch):
    from engines.settings import Settings
    from workflows.registry import build_strategies

    # SmolLM2's 8K context keeps the defaults; a 32K one reads a quarter of it; the setting overrides both.
    assert build_strategies(Settings())["rag"].config == build_strategies(Settings(max_context=8192))["rag"].config
    assert build_strategies(Settings())["rag"].config.windows == RagConfig.windows
    wide = build_strategies(Settings(max_context=32768))["rag"].config
    assert (wide.read_tokens, wide.windows, wide.dense_candidates) == (8192, 32, 96)
    assert build_strategies(Settings(max_context=131072))["rag"].config.read_tokens == 8192
    monkeypatch.setenv("TOME_RAG_READ_TOKENS", "4096")
    assert build_strategies(Settings(max_context=32768))["rag"].config.read_tokens == 4096

    doc = long_document(native_engine, FACT, 9000, 0.5)
    config = RagConfig(qdrant_path=tmp_path / "q", clear_margin=None)
    tokens = {}
    for name, c in (("default", config), ("4k", config.reading(4096))):
        got = Rag(c).retrieve(doc, [Task(QUESTION)], native_engine, lambda *a: None)[0]
        at = doc.text.index(FACT)
        assert any(s <= at < e for s, e in got.units)
        tokens[name] = sum(native_engine.count_tokens(doc.text[s:e]) for s, e in got.units)
    assert tokens["default"] <= 2300 < 3000 <= tokens["4k"] <= 4096 + 300


def test_rag_prepares_a_document_once_per_process(native_engine, tmp_path):
    from engines.embedder import get_embedder
    from memory.rag import prepared

    doc = long_document(native_engine, FACT, 3000, 0.5)
    embedder = get_embedder("all-MiniLM-L6-v2")
    ready = prepared(doc, embedder, 128)
    assert prepared(doc, embedder, 128) is ready and ready.lexical("bm25") is ready.lexical("bm25")
    assert prepared(Document(doc.text + " More."), embedder, 128) is not ready


def test_rag_without_an_index_scores_lexical_candidates_and_reads_the_best_sentences(native_engine, tmp_path):
    doc = long_document(native_engine, FACT, 9000, 0.5)
    store = tmp_path / "qdrant"
    config = RagConfig(qdrant_path=store, windows=8, dense_candidates=16, clear_margin=None)
    windows = Rag(config).retrieve(doc, [Task(QUESTION)], native_engine, lambda *a: None)[0]
    focused = Rag(replace(config, sentences=2)).retrieve(doc, [Task(QUESTION)], native_engine, lambda *a: None)[0]
    assert windows.index.startswith("none") and not store.exists()  # no whole-document index was built
    at = doc.text.index(FACT)
    for got in (windows, focused):
        assert any(s <= at < e for s, e in got.units)
    tokens = lambda got: sum(native_engine.count_tokens(doc.text[s:e]) for s, e in got.units)  # noqa: E731
    # two sentences with a neighbour on each side, cut from the windows
    assert all(any(a <= s and e <= b for a, b in windows.units) for s, e in focused.units)
    assert tokens(focused) < 300 < tokens(windows)


def test_rag_reads_a_clear_match_the_unit_way_and_the_rest_as_windows(native_engine, tmp_path):
    doc = long_document(native_engine, FACT, 9000, 0.5)
    config = RagConfig(qdrant_path=tmp_path / "q", windows=8, lexical="bm25", lexical_weight=1.0, dense_candidates=16)

    def retrieved(margin: float | None):
        return Rag(replace(config, clear_margin=margin)).retrieve(doc, [Task(QUESTION)], native_engine, print)[0]

    windows, units = retrieved(None), retrieved(0.0)  # a margin of 0: any best passage is a clear match
    assert windows.windows and not units.windows
    assert len(windows.units) > 1 and windows.ranked == []
    assert units.ranked  # the unit path ranks units; the fact's unit is read, focused around its best passage
    at = doc.text.index(FACT)
    assert any(s <= at < e for s, e in units.units)
    assert sum(native_engine.count_tokens(doc.text[s:e]) for s, e in units.units) <= RagConfig().focus_tokens + 16
