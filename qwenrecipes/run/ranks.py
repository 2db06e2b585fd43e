"""Multi-process runs seen through one pipe: the engines' launchers (torchrun, accelerate launch) tee every rank's
output to the console with a ``[default<N>]:`` / ``[rank<N>]:`` prefix (and into ``ranks/`` in the run dir). The
supervisor turns rank 0's lines (and the launcher's own, unprefixed) into events, once; every other rank's lines
only go to engine.log and to a per-rank traceback collector, so a crash on rank 1 ends the run with rank 1's
traceback rather than the launcher's ``ChildFailedError``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from qwenrecipes.run.events import Normalizer

# torch.distributed.elastic's tee prefix: "[default0]:" (role "default"), or "[rank0]:" with
# --log-line-prefix-template / newer defaults.
_PREFIX = re.compile(r"^\[(?:default|rank)(\d+)\]:")
# torchrun's failure report: "Root Cause (first observed failure):" then "  rank      : 1 (local_rank: 1)".
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\)")
_RANK_LINE = re.compile(r"^\s*rank\s*:\s*(\d+)")


# torch.distributed's own excepthook prefixes every line of an uncaught exception with "[rank<N>]: " once a
# process group exists, inside the launcher's prefix: "[default1]:[rank1]: Traceback (most recent call last):".
# Without the launcher's tee it stands alone.
_EXCEPTHOOK = re.compile(r"^\[rank(\d+)\]: ")


def split_rank(line: str) -> tuple[int | None, str]:
    """(rank, the line without its prefixes); (None, line) for a launcher line or a tqdm redraw continuation."""
    match = _EXCEPTHOOK.match(line) or _PREFIX.match(line)
    if match is None:
        return None, line
    text = line[match.end():]
    hook = _EXCEPTHOOK.match(text)
    return int(match.group(1)), text[hook.end():] if hook else text


@dataclass
class RankTracebacks:
    """Each rank's last traceback (one Normalizer per rank, for its traceback grouping only) and the rank the
    launcher names as the root cause of a failure."""

    engine: str
    normalizers: dict[int, Normalizer] = field(default_factory=dict)
    root_cause: int | None = None
    _in_root_cause: bool = False

    def feed(self, rank: int, text: str) -> None:
        normalizer = self.normalizers.setdefault(rank, Normalizer(self.engine))
        normalizer.feed(text)

    def feed_launcher(self, text: str) -> None:
        if _ROOT_CAUSE.search(text):
            self._in_root_cause = True
            return
        match = _RANK_LINE.match(text)
        if self._in_root_cause and match:
            self.root_cause = int(match.group(1))
            self._in_root_cause = False

    def traceback(self) -> tuple[int, str] | None:
        """(rank, traceback) of the failing rank: the launcher's root cause when it had a traceback, else the
        first rank that printed one (rank order)."""
        for normalizer in self.normalizers.values():
            normalizer.flush()
        found = {rank: n.last_traceback for rank, n in self.normalizers.items() if n.last_traceback}
        if self.root_cause in found:
            return self.root_cause, found[self.root_cause]  # type: ignore[index]
        for rank in sorted(found):
            return rank, found[rank]
        return None
