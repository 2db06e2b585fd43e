"""One versioned event schema for every engine's output, and the parsers that produce it.

Layering, so the parsers stay testable on recorded logs:

* ``split_lines`` / ``decode_line`` turn the engine's byte stream into text lines (``\\r`` counts as a
  line end, because tqdm redraws its bar with ``\\r`` and HF prints its log dicts between redraws).
* ``parse_line(engine, line)`` is a PURE function: one line -> a list of events, with no step numbers
  (HF's log dict carries none). A line nobody understands becomes a ``raw`` event, never nothing.
* ``Normalizer`` is the only stateful part: it numbers train steps, groups traceback lines into one
  ``error`` event, and drops the internal ``progress`` events from what gets written.

Events are plain dicts (JSON lines in ``events.jsonl``), with ``None`` values left out:
``{"v": 1, "t": unix_time, "type": ..., "step": ..., "loss": ..., ...}``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from qwenrecipes.engines.base import MEMORY_FALLBACK

SCHEMA_VERSION = 1

# Types written to events.jsonl. "progress" (tqdm bar) and "metrics" (HF's end-of-training dict) are
# internal: the runner uses them for the progress bar and the summary; engine.log keeps their lines.
EVENT_TYPES = ("start", "train", "eval", "checkpoint", "warning", "error", "raw", "end")
INTERNAL_TYPES = ("progress", "metrics")

Event = dict[str, Any]

# HF log-dict key -> schema key: the Trainer's own keys. An engine adds the keys it prints itself
# (``Engine.log_keys``); anything not listed is kept under its own (sanitised) name, so an engine's extra
# metrics are never lost.
_TRAIN_KEYS: Mapping[str, str] = {
    "loss": "loss",
    "train_loss": "loss",
    "learning_rate": "lr",
    "lr": "lr",
    "grad_norm": "grad_norm",
    "epoch": "epoch",
    "num_input_tokens_seen": "tokens_seen",
}
# Keys that only appear in HF's final train() summary dict.
_METRIC_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}

_DICT_RE = re.compile(r"\{'[A-Za-z_/][^{}]*\}")
# A tqdm bar: optional "desc:", percentage, bar, "n/total", optional [elapsed<remaining, rate].
_TQDM_RE = re.compile(
    r"^(?:(?P<desc>.*?):\s*)?(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"(?:\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+),\s*(?P<rate>[^\]]*)\])?"
)
_WARNING_RE = re.compile(r"Warning\b|\bWARN(ING)?\b|^warning:|\[W\d")
_TRACEBACK_START = "Traceback (most recent call last):"
# The last line of a traceback: "pkg.mod.SomeError: message" (or a bare "KeyboardInterrupt").
_EXCEPTION_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Failure))(?::\s*(?P<msg>.*))?$")
_SAVE_RE = re.compile(r"Saving model checkpoint to (?P<path>\S+)")
_CHECKPOINT_DIR_RE = re.compile(r"checkpoint-(\d+)$")


def decode_line(raw: bytes) -> str:
    """Engines print whatever bytes their libraries produce; a broken byte must not lose the line."""
    return raw.decode("utf-8", errors="replace")


def split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split a byte buffer on \\n and \\r; return the complete lines and the unterminated tail."""
    parts = re.split(rb"\r\n|\r|\n", buffer)
    return parts[:-1], parts[-1]


def _number(value: Any) -> Any:
    """Newer transformers prints floats as strings ('1.234', and '12' for 12.0): numeric strings become
    floats (counts are made ints by the caller); nan/inf stay text because JSON has no such numbers."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


_COUNT_KEYS = ("tokens_seen", "step", "total_steps")


def _key(name: str) -> str:
    """A metric name safe as a JSON key that can't shadow schema fields: 'memory/x (GiB)' -> 'memory_x_gib'."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", name.lower())).strip("_")


def parse_log_dict(text: str) -> dict[str, Any] | None:
    """Parse an HF Trainer log dict printed with str(dict). ast.literal_eval: log text is never code."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return None
    return {k: _number(v) for k, v in value.items()}


def event_from_log_dict(logs: dict[str, Any], keys: Mapping[str, str] = _TRAIN_KEYS) -> Event:
    """Map one HF log dict to a train / eval / metrics event (no step: the dict has none). ``keys``: log key ->
    schema key (the Trainer's, plus the engine's own: ``log_keys``)."""
    if any(k.startswith("eval_") for k in logs):
        event: Event = {"type": "eval"}
        for k, v in logs.items():
            if k == "epoch":
                event["epoch"] = v
            elif k == "eval_loss":
                event["eval_loss"] = v
            else:
                event[_key(k)] = v
        return event
    if _METRIC_KEYS & logs.keys() and "train_runtime" in logs:
        event = {"type": "metrics"}
        for k, v in logs.items():
            event[_key(k)] = v
        if isinstance(logs.get("train_steps_per_second"), (int, float)):
            event["steps_per_s"] = logs["train_steps_per_second"]
        return event
    event = {"type": "train"}
    for k, v in logs.items():
        target = keys.get(k)
        if target is None or target == MEMORY_FALLBACK:
            event[_key(k)] = v
        elif target == "memory_gb":
            event[target] = max(v, event.get(target, 0)) if isinstance(v, (int, float)) else v
        else:
            event.setdefault(target, v)
    for k in _COUNT_KEYS:
        if isinstance(event.get(k), float) and event[k].is_integer():
            event[k] = int(event[k])
    # An engine's second-best memory figures: some peak is what a person compares across runs.
    for k in [k for k, target in keys.items() if target == MEMORY_FALLBACK]:
        if isinstance(logs.get(k), (int, float)) and "memory_gb" not in event:
            event["memory_gb"] = logs[k]
    return event


def _parse_progress(line: str) -> tuple[Event, str] | None:
    """A tqdm bar and whatever follows it on the same line (a logger writing to stderr right after a
    redraw, without the \r that tqdm.write would add)."""
    match = _TQDM_RE.match(line.strip())
    if not match:
        return None
    event: Event = {"type": "progress", "n": int(match["n"]), "total": int(match["total"])}
    if match["desc"]:
        event["desc"] = match["desc"].strip()
    rate = (match["rate"] or "").strip()
    if rate.endswith("s/it"):
        seconds = _number(rate[:-4].strip())
        if isinstance(seconds, (int, float)) and seconds > 0:
            event["steps_per_s"] = 1.0 / seconds
    elif rate.endswith("it/s"):
        value = _number(rate[:-4].strip())
        if isinstance(value, (int, float)):
            event["steps_per_s"] = float(value)
    return event, line.strip()[match.end():]


def parse_hf_line(line: str, keys: Mapping[str, str] = _TRAIN_KEYS) -> list[Event]:
    """The HF Trainer output shared by every engine: log dicts, tqdm bars, warnings, tracebacks. ``keys`` as
    in ``event_from_log_dict``."""
    stripped = line.strip()
    if not stripped:
        return []
    # The dict usually stands alone, but loggers may prefix it ("[INFO] {'loss': ...}").
    match = _DICT_RE.search(stripped)
    if match:
        logs = parse_log_dict(match.group(0))
        if logs and ({"loss", "eval_loss", "train_runtime"} & logs.keys() or any(k.startswith("eval_") for k in logs)):
            return [event_from_log_dict(logs, keys)]
    progress = _parse_progress(stripped)
    if progress is not None:
        event, rest = progress
        return [event, *parse_hf_line(rest, keys)] if rest.strip() else [event]
    if stripped == _TRACEBACK_START:
        return [{"type": "error", "traceback_start": True, "message": stripped}]
    exception = _EXCEPTION_RE.match(stripped)
    if exception and not line.startswith((" ", "\t")):
        return [{"type": "error", "exception": exception["name"], "message": stripped}]
    saved = _SAVE_RE.search(stripped)
    if saved:
        path = saved["path"].rstrip(".")
        event: Event = {"type": "checkpoint", "path": path}
        number = _CHECKPOINT_DIR_RE.search(path.rstrip("/"))
        if number:
            event["step"] = int(number.group(1))
        return [event]
    if _WARNING_RE.search(stripped):
        return [{"type": "warning", "message": stripped}]
    return [{"type": "raw", "message": stripped}]


@cache
def log_keys(engine: str) -> Mapping[str, str]:
    """The log-dict vocabulary of ``engine``: the Trainer's keys plus the engine's own (``Engine.log_keys``); an
    unknown name (a test's fake engine) gets the Trainer's."""
    from qwenrecipes.engines import ENGINES  # the registry only: the engine module is loaded by the run already

    if engine not in ENGINES:
        return _TRAIN_KEYS
    return {**_TRAIN_KEYS, **ENGINES[engine].log_keys}


def parse_line(engine: str, line: str) -> list[Event]:
    """Pure: one text line of `engine`'s output -> events without step numbers or timestamps. Every engine
    qwenrecipes runs trains through the HF Trainer, whose output parse_hf_line reads."""
    return parse_hf_line(line, log_keys(engine))


def _drop_none(event: Event) -> Event:
    return {k: v for k, v in event.items() if v is not None}


@dataclass
class Normalizer:
    """Turn the pure per-line events into the written stream: step numbers, grouped tracebacks.

    Step numbering: HF's log dict has no step, so train event k (counted from ``start_step``) is step
    ``start_step + k * logging_steps``; a training tqdm bar (no description) that already shows a later
    step wins, which covers ``logging_first_step`` and uneven last steps.
    """

    engine: str
    logging_steps: int = 1
    start_step: int = 0
    total_steps: int | None = None
    last_step: int = field(init=False)
    bar_step: int = field(init=False, default=0)
    traceback: list[str] = field(init=False, default_factory=list)
    last_traceback: str | None = field(init=False, default=None)
    metrics: Event = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.last_step = self.start_step

    @property
    def in_traceback(self) -> bool:
        return bool(self.traceback)

    def feed(self, line: str) -> list[Event]:
        """Events for one line (may be empty while a traceback is being collected)."""
        out: list[Event] = []
        parsed = parse_line(self.engine, line)
        if self.traceback:
            # Inside a traceback every line belongs to it until the exception line ends it. Chained
            # tracebacks ("During handling ...") restart collection, so one error event carries all.
            if any(e["type"] == "error" and "exception" in e for e in parsed):
                self.traceback.append(line.rstrip())
                out.append(self._close_traceback())
                return out
            if any(e["type"] in ("train", "eval", "progress") for e in parsed):
                out.append(self._close_traceback())
            else:
                self.traceback.append(line.rstrip())
                return out
        for event in parsed:
            out.extend(self._place(event))
        return out

    def _place(self, event: Event) -> list[Event]:
        kind = event["type"]
        if kind == "error" and event.get("traceback_start"):
            self.traceback = [event["message"]]
            return []
        if kind == "progress":
            # HF's evaluation bar has no description either: a bar whose total is not the training's (known from
            # the plan, else from the first bar, which is training's) is an eval bar and says nothing of steps.
            if "desc" not in event and self.total_steps in (None, event["total"]):
                self.bar_step = max(self.bar_step, event["n"])
                self.total_steps = event["total"]
                event = {**event, "step": event["n"]}
            return [event]
        if kind == "train":
            step = max(self.last_step + self.logging_steps, self.bar_step)
            if self.total_steps and self.last_step < self.total_steps < step:
                step = self.total_steps  # a last, shorter logging interval
            self.last_step = step
            return [{**event, "step": step}]
        if kind == "eval":
            return [{**event, "step": self.last_step}]
        if kind == "metrics":
            self.metrics = event
            return [event]
        return [event]

    def _close_traceback(self) -> Event:
        text = "\n".join(self.traceback)
        self.traceback = []
        self.last_traceback = text
        last = text.strip().splitlines()[-1] if text.strip() else ""
        match = _EXCEPTION_RE.match(last.strip())
        event: Event = {"type": "error", "message": text}
        if match:
            event["exception"] = match["name"]
        return event

    def flush(self) -> list[Event]:
        """At end of stream: an unfinished traceback (engine hung or was killed) is still an error."""
        return [self._close_traceback()] if self.traceback else []


def normalize(engine: str, lines: Iterable[str], *, logging_steps: int = 1, start_step: int = 0,
              written_only: bool = True) -> Iterator[Event]:
    """Run a whole recorded log through a Normalizer (tests, re-parsing an engine.log)."""
    normalizer = Normalizer(engine, logging_steps=logging_steps, start_step=start_step)
    for line in lines:
        for event in normalizer.feed(line):
            if not written_only or event["type"] in EVENT_TYPES:
                yield event
    for event in normalizer.flush():
        yield event


def iter_log_lines(data: bytes) -> Iterator[str]:
    """All text lines of a recorded byte log, \\r-separated tqdm redraws included."""
    lines, tail = split_lines(data)
    for raw in lines:
        yield decode_line(raw)
    if tail:
        yield decode_line(tail)


def make_event(event: Event, *, t: float) -> Event:
    """Stamp an event with the schema version and time and drop empty fields, ready to write."""
    stamped: Event = {"v": SCHEMA_VERSION, "t": round(t, 3)}
    stamped.update(_drop_none(event))
    stamped.pop("traceback_start", None)
    return stamped


def parse_event_line(line: bytes | str) -> Event | None:
    """One events.jsonl line as an event, or None when it is not one (damaged, cut off by a kill, edited):
    a JSON object with a string "type", and a number "t" and an integer "step" where they are present."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError and undecodable bytes are ValueErrors
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    t, step = value.get("t"), value.get("step")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
        return None
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return None
    return value


def read_events(path: Any, problems: list[str] | None = None) -> list[Event]:
    """Read an events.jsonl, skipping lines that are not events (a torn last line from a killed writer, a
    damaged or edited line) instead of failing; each one skipped is named (file and line) in `problems`."""
    events: list[Event] = []
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                event = parse_event_line(line)
                if event is None:
                    if problems is not None:
                        problems.append(f"{path} line {number}: not an event, skipped ({_preview(line)})")
                    continue
                events.append(event)
    except FileNotFoundError:
        return []
    except OSError as exc:
        if problems is not None:
            problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
    return events


def _preview(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace").strip()
    return repr(text[:60] + ("..." if len(text) > 60 else ""))
