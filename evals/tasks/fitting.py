"""Making a text exactly as long as asked, in the engine's tokens (needles go in with engines.text.plant)."""

from __future__ import annotations

from collections.abc import Callable

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
