"""Pure-Python readers of exported files: GGUF key/value metadata and safetensors headers (struct alone, so
verify needs neither the gguf nor the safetensors package)."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from qwenrecipes.errors import QwenRecipesError

_GGUF_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise QwenRecipesError(f"{getattr(fh, 'name', 'GGUF file')} is truncated")
    return data


def _gguf_value(fh: BinaryIO, kind: int, keep: bool) -> Any:
    if kind == _GGUF_STRING:
        (length,) = struct.unpack("<Q", _read_exact(fh, 8))
        raw = _read_exact(fh, length)
        return raw.decode("utf-8", errors="replace") if keep else None
    if kind == _GGUF_ARRAY:
        item_kind, count = struct.unpack("<IQ", _read_exact(fh, 12))
        if item_kind in _GGUF_SCALARS:
            size = struct.calcsize(_GGUF_SCALARS[item_kind])
            raw = _read_exact(fh, size * count)
            return list(struct.unpack(f"<{count}{_GGUF_SCALARS[item_kind][1]}", raw)) if keep else count
        items = [_gguf_value(fh, item_kind, keep) for _ in range(count)]
        return items if keep else count
    fmt = _GGUF_SCALARS.get(kind)
    if fmt is None:
        raise QwenRecipesError(f"unknown GGUF value type {kind} in {getattr(fh, 'name', 'GGUF file')}")
    return struct.unpack(fmt, _read_exact(fh, struct.calcsize(fmt)))[0]


def read_gguf_metadata(path: Path, keep_arrays: Sequence[str] = ("tokenizer.ggml.tokens",)) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (v2/v3), read with struct alone so verify needs no gguf package.
    Arrays not named in ``keep_arrays`` come back as their length (the merges list is 150k strings)."""
    with path.open("rb") as fh:
        if _read_exact(fh, 4) != b"GGUF":
            raise QwenRecipesError(f"{path} is not a GGUF file (bad magic): re-run `qwenrecipes export gguf`")
        version, tensors, count = struct.unpack("<IQQ", _read_exact(fh, 20))
        meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensors}
        for _ in range(count):
            (key_len,) = struct.unpack("<Q", _read_exact(fh, 8))
            key = _read_exact(fh, key_len).decode("utf-8")
            (kind,) = struct.unpack("<I", _read_exact(fh, 4))
            meta[key] = _gguf_value(fh, kind, kind != _GGUF_ARRAY or key in keep_arrays)
    return meta


def safetensors_keys(path: Path) -> list[str]:
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", _read_exact(fh, 8))
        header = json.loads(_read_exact(fh, size))
    return [k for k in header if k != "__metadata__"]
