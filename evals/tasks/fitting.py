"""Making a text exactly as long as asked, in the engine's tokens, and placing needles at sentence boundaries."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evals.corpus import ends_sentence

# Stop refining once the text is this close below the budget (a fraction of it); well inside the 2% tolerance.
SLACK = 0.003


def fit(build: Callable[[int], str], count: Callable[[str], int], budget: int, guess: int, most: int) -> str:
    """The text build(k) with the largest k <= most whose token count is at most `budget`.

    Token counts grow almost linearly with k, so interpolating between the closest short and long
    measurements needs only a few full tokenizations; every third step bisects so it always converges.
    """
    fixed = count(build(0))
    if fixed > budget:
        raise ValueError(f"the fixed parts alone need {fixed} tokens, more than the budget of {budget}")
    lo, lo_tokens = 0, fixed
    hi, hi_tokens = most + 1, None  # smallest k known to be too long (most + 1: not measured)
    k = max(1, min(guess, most))
    for step in range(1, 64):
        tokens = count(build(k))
        if tokens <= budget:
            lo, lo_tokens = k, tokens
        else:
            hi, hi_tokens = k, tokens
        if hi - lo <= 1 or budget - lo_tokens <= max(2, SLACK * budget):
            break
        if hi_tokens is None:  # nothing too long seen yet: extrapolate from the tokens per unit so far
            k = lo + round((budget - lo_tokens) * lo / max(lo_tokens - fixed, 1))
        elif step % 3 == 0:
            k = (lo + hi) // 2
        else:
            k = lo + round((budget - lo_tokens) * (hi - lo) / (hi_tokens - lo_tokens))
        k = min(max(k, lo + 1), hi - 1)
    return build(lo)


def insert_at_boundaries(words: Sequence[str], needles: Sequence[tuple[float, str]], paragraphs: bool = False) -> str:
    """Join `words` and put each needle at the sentence boundary nearest its depth (0 = start, 1 = end), or with
    `paragraphs`, as a paragraph of its own at the nearest paragraph break (a word ending in a blank line).

    Needles keep their given order when they share a boundary, so chains (variable tracking, bAbI facts) stay
    in order if their depths are sorted.
    """
    n = len(words)
    ends = (lambda w: w.endswith("\n\n")) if paragraphs else ends_sentence
    boundaries = [0] + [i + 1 for i, w in enumerate(words) if ends(w)] + [n]
    at: dict[int, list[str]] = {}
    last = 0
    for depth, needle in needles:
        target = depth * n
        # Never before an earlier needle: ordered needles stay ordered.
        b = min((b for b in boundaries if b >= last), key=lambda b: abs(b - target), default=n)
        at.setdefault(b, []).append(needle)
        last = b
    parts: list[str] = []
    for i in range(n + 1):
        for needle in at.get(i, []):
            if paragraphs:
                if parts and not parts[-1].endswith("\n\n"):
                    parts.append("\n\n" if not parts[-1].endswith("\n") else "\n")
                parts.append(needle + "\n\n")
                continue
            if parts and not parts[-1][-1:].isspace():
                parts.append(" ")
            parts.append(needle + " ")
        if i < n:
            parts.append(words[i])
    return "".join(parts).strip()
