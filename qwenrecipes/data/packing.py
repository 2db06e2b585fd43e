"""Pack once: the bins every engine trains when ``data.packing`` is on (issue 14).

Each engine's own packer puts rows into different bins and decides its own step count, so packing used to break
the "same training on every engine" promise. Here qwenrecipes packs the tokenized rows (data/tokens.py) itself, once:

- **Bins**: best-fit decreasing on token lengths with capacity ``max_seq_length``. Rows of equal length are taken
  in an order drawn from the recipe's seed, so the bins are a pure function of (rows, lengths, seed). Every row
  goes into exactly one bin (rows longer than the capacity were already dropped and reported by the data path).
- **Packed row**: the member rows' ``input_ids`` and ``labels`` concatenated, ``position_ids`` restarting at 0
  for each member, and ``seq_lengths`` (the member lengths). Each member's first label is set to -100: unpacked,
  a row's first token is never predicted (the model shifts labels by one); packed, it would be predicted from
  the previous member's last token, which is exactly the cross-row learning packing must not add.
- **No attention across rows** is the engines' side: transformers (5.x) derives the per-row mask from
  position ids that restart at 0, but only when no 2-D attention mask is passed (docs/equivalence.md, Packing).

The bin order is shuffled per epoch from the seed like rows are (``Plan.bin_stream``), and ``max_steps`` counts
bins, not rows (recipe/plan.py).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qwenrecipes.data.tokens import IGNORE, TokenRow


@dataclass(frozen=True)
class PackedRow:
    """One bin as the engines are handed it."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_lengths: list[int]


@dataclass(frozen=True)
class Packing:
    """The bins of a plan's training rows: indices into ``Plan.train_rows``, each bin's rows in packing order."""

    capacity: int
    bins: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...]  # token length of each training row
    tokens: tuple[TokenRow, ...] = field(default=(), repr=False, compare=False)  # kept so render tokenizes once

    @property
    def fills(self) -> list[float]:
        return [sum(self.lengths[i] for i in members) / self.capacity for members in self.bins]

    @property
    def tokens_total(self) -> int:
        return sum(self.lengths)

    @property
    def padding_fraction(self) -> float:
        """Share of the bins' capacity left empty (what padding each bin to max_seq_length would cost)."""
        return 1.0 - self.tokens_total / (len(self.bins) * self.capacity) if self.bins else 0.0

    def summary(self, *, with_bins: bool = True) -> dict[str, Any]:
        """What plan.json records: the fill, and the bins themselves (row indices into the training rows)."""
        fills = self.fills
        out: dict[str, Any] = {
            "algorithm": "best-fit decreasing (ties in seed order)",
            "capacity": self.capacity,
            "rows": len(self.lengths),
            "bins": len(self.bins),
            "rows_per_bin": round(len(self.lengths) / len(self.bins), 2) if self.bins else 0.0,
            "mean_fill_pct": round(100 * sum(fills) / len(fills), 2) if fills else 0.0,
            "min_fill_pct": round(100 * min(fills), 2) if fills else 0.0,
            "padding_fraction": round(self.padding_fraction, 4),
        }
        if with_bins:
            out["members"] = [list(members) for members in self.bins]
        return out


def best_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int) -> list[tuple[int, ...]]:
    """Bins of row indices, none over ``capacity`` tokens: each row, longest first, goes into the open bin it
    fills best (least room left), else a new bin. Deterministic: equal lengths keep a seed-drawn order."""
    for index, length in enumerate(lengths):
        if length > capacity or length <= 0:
            raise ValueError(f"row {index}: {length} tokens cannot be packed into bins of {capacity}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties stay in the seeded order
    bins: list[list[int]] = []
    # Open bins as (room left, bin number), sorted: the best fit is the first with room >= length.
    rooms: list[tuple[int, int]] = []
    shortest = min(lengths, default=0)
    for i in order:
        length = lengths[i]
        at = bisect.bisect_left(rooms, (length, -1))
        if at < len(rooms):
            room, number = rooms.pop(at)
            bins[number].append(i)
            room -= length
        else:
            number, room = len(bins), capacity - length
            bins.append([i])
        if room >= shortest:  # a bin no remaining row can fit into is closed for good
            bisect.insort(rooms, (room, number))
    return [tuple(members) for members in bins]


def pack(tokens: Sequence[TokenRow], capacity: int, seed: int) -> Packing:
    """The plan's packing of tokenized training rows."""
    lengths = tuple(len(t.input_ids) for t in tokens)
    bins = best_fit_decreasing(lengths, capacity, seed)
    packed = sorted(i for members in bins for i in members)
    if packed != list(range(len(lengths))):  # every row is trained exactly once per epoch
        raise AssertionError("packing lost or duplicated a row")
    return Packing(capacity=capacity, bins=tuple(bins), lengths=lengths, tokens=tuple(tokens))


def packed_row(tokens: Sequence[TokenRow], members: Sequence[int]) -> PackedRow:
    """The member rows concatenated, position ids restarting at 0, each member's first token unlabelled."""
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    lengths: list[int] = []
    for i in members:
        row = tokens[i]
        input_ids.extend(row.input_ids)
        labels.append(IGNORE)  # never predicted unpacked; packed it would be predicted across rows
        labels.extend(row.labels[1:])
        positions.extend(range(len(row.input_ids)))
        lengths.append(len(row.input_ids))
    return PackedRow(input_ids, labels, positions, lengths)


def padding_fraction(lengths: Sequence[int], batch: int, *, pad_to: int | None = None) -> float:
    """Padding share of unpacked training: rows taken ``batch`` at a time, each batch padded to its longest row
    (``pad_to``: to that fixed length instead)."""
    real = padded = 0
    for start in range(0, len(lengths), batch):
        chunk = lengths[start:start + batch]
        real += sum(chunk)
        padded += len(chunk) * (pad_to if pad_to is not None else max(chunk))
    return 1.0 - real / padded if padded else 0.0
