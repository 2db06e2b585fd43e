"""Realistic row lengths for benchmarks: a lognormal fitted to published statistics of real chat data.

Every earlier benchmark used rows of exactly 2,048 tokens, where packing has nothing to gain. Real chat data is
mostly short rows with a long tail. ``--synthetic-data 4000xlmsys:4096`` draws each row's token length from the
lognormal below (redrawn while over the cap), and builds exact-length ChatML rows of those lengths.

Source: LMSYS-Chat-1M (Zheng et al., "LMSYS-Chat-1M: A Large-Scale Real-World LLM Conversation Dataset",
ICLR 2024, arXiv:2309.11998), Table 1, basic statistics of 1,000,000 real conversations: 2.0 turns per
conversation on average, 69.5 tokens per user prompt and 214.5 tokens per response on average (Llama tokenizer).
A conversation therefore averages 2.0 x (69.5 + 214.5) = 568 content tokens, plus ChatML framing (about 5 tokens
per message, 4 messages): mean ~588 tokens.

Fit: lognormal with that mean. The table gives means, not the histogram's spread; the paper's length figure shows
a heavy right tail spanning three orders of magnitude, for which sigma = 1.0 is taken (so median = mean / e^0.5
= ~357 tokens, 90th percentile ~1,290, 99th ~3,660). Both numbers are constants here, so any benchmark
states the distribution it ran on.
"""

from __future__ import annotations

import math
import random

LMSYS_MEAN_TOKENS = 2.0 * (69.5 + 214.5) + 4 * 5  # Table 1 of arXiv:2309.11998 + ChatML framing
LMSYS_SIGMA = 1.0
LMSYS_MU = math.log(LMSYS_MEAN_TOKENS) - LMSYS_SIGMA ** 2 / 2
SHORTEST = 24  # the shortest exact-length synthetic row (data/synthetic.py)


def lmsys_lengths(n_rows: int, max_tokens: int, seed: int) -> list[int]:
    """``n_rows`` token lengths drawn from the LMSYS-Chat-1M lognormal, redrawn while outside
    [SHORTEST, max_tokens] (a truncated lognormal: the recipe would drop longer rows anyway)."""
    if max_tokens < SHORTEST:
        raise ValueError(f"max_tokens {max_tokens} is below the shortest synthetic row ({SHORTEST} tokens)")
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n_rows:
        length = round(rng.lognormvariate(LMSYS_MU, LMSYS_SIGMA))
        if SHORTEST <= length <= max_tokens:
            out.append(length)
    return out
