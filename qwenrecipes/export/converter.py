"""The HF->GGUF converter: llama.cpp's convert_hf_to_gguf.py, taken from the llama-cpp-python sdist on PyPI
(which vendors the whole llama.cpp tree; the `gguf` package ships only the writer library, not the converter).
Pinned by version AND sha256 of the sdist so the converter never changes under us."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.paths import qwenrecipes_home

CONVERTER_PACKAGE = "llama-cpp-python"
CONVERTER_VERSION = "0.3.36"
CONVERTER_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_DIR_ENV = "QWENRECIPES_LLAMA_CPP_DIR"  # a llama.cpp checkout to use instead


def _converter_cache() -> Path:
    return qwenrecipes_home() / "llama.cpp" / f"{CONVERTER_PACKAGE}-{CONVERTER_VERSION}"


def _valid_converter(folder: Path) -> bool:
    return ((folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf-py" / "gguf").is_dir()
            and (folder / "conversion").is_dir())


def ensure_converter() -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py (+ conversion/ and gguf-py/), from
    $QWENRECIPES_LLAMA_CPP_DIR or extracted once from the pinned llama-cpp-python sdist (PyPI, no build)."""
    override = os.environ.get(CONVERTER_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
        if not _valid_converter(folder):
            raise QwenRecipesError(f"${CONVERTER_DIR_ENV}={folder} lacks convert_hf_to_gguf.py, conversion/ or "
                                   "gguf-py/: point it at a llama.cpp checkout")
        return folder
    cache = _converter_cache()
    if _valid_converter(cache):
        return cache
    with tempfile.TemporaryDirectory(prefix="qr-sdist-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", tmp, f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}"],
            capture_output=True, text=True, check=False)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise QwenRecipesError(f"could not download the GGUF converter ({CONVERTER_PACKAGE}=={CONVERTER_VERSION}"
                                   f" sdist from PyPI):\n{tail}\nCheck network access to PyPI, or set "
                                   f"${CONVERTER_DIR_ENV} to a llama.cpp checkout")
        extract_converter(sdists[0], cache)
    return cache


def extract_converter(sdist: Path, dest: Path) -> None:
    """Unpack the converter's files from the sdist into ``dest`` (atomically), checking the sha256 pin."""
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != CONVERTER_SDIST_SHA256:
        raise QwenRecipesError(f"{sdist.name} has sha256 {digest}, expected {CONVERTER_SDIST_SHA256}: refusing "
                               "to run an unpinned converter; delete the file and retry")
    prefix = f"llama_cpp_python-{CONVERTER_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                relative = member.name[len(prefix):]
                if not relative.startswith(wanted) or ".." in Path(relative).parts:
                    continue
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                reader = archive.extractfile(member)
                if reader is not None:
                    target.write_bytes(reader.read())
        if not _valid_converter(tmp):
            raise QwenRecipesError(f"{sdist.name} does not contain llama.cpp's converter where expected")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
