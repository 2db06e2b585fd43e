"""Offline engine bundles: one unpacked, trimmed site-packages folder for an air-gapped GPU host.

Why not a venv: the host has no network and already carries the heavy, CUDA-matched part (torch, triton,
the NVIDIA libraries, often transformers/peft/accelerate), and a device call may carry only ~64 MiB. So a
bundle holds exactly what the engine's training path imports and the host lacks (or has at a version the
engine refuses), as wheels unzipped into ``<out>/site`` (that is all installing a wheel is; the .dist-info
folders stay so importlib.metadata versions resolve), then trimmed. On the host:
``PYTHONPATH=<out>/site python3 -m <engine module> ...`` (``bench --python python3 --pythonpath <out>/site``).

The package sets were read off real CPU and H200 runs (the shared bundle builders: sys.modules at exit of a tiny
`train` run, then re-checked against a venv holding only the host's packages plus the bundle).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qwenrecipes.engines import ENGINES
from qwenrecipes.engines.base import BundleSpec
from qwenrecipes.errors import QwenRecipesError

DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                     "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")

# bitsandbytes ships one native library per CUDA version (~40 MB together): keep CUDA 13.0 (torch cu130) + CPU.
_BNB_TRIM = ("bitsandbytes/libbitsandbytes_*.so", "!libbitsandbytes_cuda130.so", "!libbitsandbytes_cpu.so")
ARCHIVE_NAME = "site.tar.xz"
_COMMON_TRIMS = ("test", "*/tests", "*.dist-info/sboms", "*.data", "**/__pycache__")


@dataclass
class BundleResult:
    site: Path
    size_mib: float
    packages: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the host already has them


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path | None) -> dict[str, str]:
    """`pip freeze` / `pip list --format=freeze` text -> {canonical name: version}."""
    if path is None:
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            out[canonical(match.group(1))] = match.group(2)
    return out


def _pip(args: Sequence[str], progress: Callable[[str], None]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "is ignored" not in ln][-6:]
        raise QwenRecipesError(f"pip {' '.join(args[:2])} failed: {' | '.join(tail)}")


def _find_wheel(folder: Path, requirement: str) -> Path:
    name, _, version = requirement.partition("==")
    stem = re.sub(r"[-.]+", "_", name).lower()
    for wheel in sorted(folder.glob("*.whl")):
        parts = wheel.name.split("-")
        if len(parts) >= 2 and re.sub(r"[-.]+", "_", parts[0]).lower() == stem and parts[1] == version:
            return wheel
    raise QwenRecipesError(f"no wheel for {requirement} in {folder}")


def _has_wheel(folder: Path, requirement: str) -> bool:
    try:
        _find_wheel(folder, requirement)
    except QwenRecipesError:
        return False
    return True


def _trim(site: Path, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        for path in list(site.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


def _trim_transformers(site: Path, spec: BundleSpec) -> None:
    models = site / "transformers" / "models"
    if not models.is_dir():
        return
    for folder in models.iterdir():
        # transformers/models/auto is the Auto* classes' mappings (modeling_auto.py), which every model load needs.
        if not folder.is_dir() or folder.name == "auto":
            continue
        if spec.keep_models and folder.name not in spec.keep_models:
            # An empty package stays: transformers' auto classes import `transformers.models.<type>` while scanning
            # their mappings in order (AutoTokenizer looks for Qwen2Tokenizer in audioflamingo3 before qwen2), and a
            # missing module raises where an empty one just lacks the attribute and the scan moves on.
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            (folder / "__init__.py").write_text("# trimmed from this offline bundle\n", encoding="utf-8")
        elif spec.keep_modeling and folder.name not in spec.keep_modeling:
            for modeling in folder.glob("modeling_*.py"):
                modeling.unlink()


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def bundle_spec(engine: str) -> BundleSpec | None:
    """The engine's bundle recipe (``Engine.bundle``); None for an unknown engine or one without a bundle."""
    return ENGINES[engine].bundle() if engine in ENGINES else None


def build_bundle(engine: str, python_version: str, platforms: Sequence[str] | None, host_has: Path | None,
                 out_dir: Path, *, max_mib: float = 55.0, wheel_cache: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> BundleResult:
    """Download the engine's wheels for the host's Python and platform, unzip those the host lacks into
    out_dir/site, trim, and refuse a bundle over ``max_mib``. A package the host has at the same version
    (``host_has``: its pip freeze) is skipped."""
    report = progress or (lambda message: None)
    spec = bundle_spec(engine)
    if spec is None:
        known = ", ".join(name for name in ENGINES if ENGINES[name].bundle() is not None)
        raise QwenRecipesError(f"no bundle recipe for {engine!r}: choose one of {known}")
    if not re.fullmatch(r"3\.\d+", python_version):
        raise QwenRecipesError(f"--python {python_version!r}: expected X.Y, e.g. 3.12")
    host = read_freeze(host_has)
    wanted, skipped = [], []
    for requirement in (*spec.packages, *spec.sdists):
        name, _, version = requirement.partition("==")
        if host.get(canonical(name)) == version:
            skipped.append(requirement)
        else:
            wanted.append(requirement)
    cache = wheel_cache or Path(tempfile.gettempdir()) / f"qwenrecipes-wheels-py{python_version}"
    cache.mkdir(parents=True, exist_ok=True)
    platform_args = [arg for p in (platforms or DEFAULT_PLATFORMS) for arg in ("--platform", p)]
    # A wheel already in the cache (from an earlier bundle) is neither downloaded nor built again.
    missing = [requirement for requirement in wanted if not _has_wheel(cache, requirement)]
    for requirement in (r for r in missing if r not in spec.sdists):
        report(f"downloading {requirement}")
        _pip(["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
              "--implementation", "cp", *platform_args, "-d", str(cache), requirement], report)
    for requirement in (r for r in missing if r in spec.sdists):
        report(f"building a wheel of {requirement} (pure-Python sdist)")
        with tempfile.TemporaryDirectory() as sdist_dir:
            _pip(["download", "-q", "--no-deps", "--no-binary=:all:", "-d", sdist_dir, requirement], report)
            sources = [str(p) for p in Path(sdist_dir).iterdir()]
            _pip(["wheel", "-q", "--no-deps", "-w", str(cache), *sources], report)
    site = out_dir / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    for requirement in wanted:
        with zipfile.ZipFile(_find_wheel(cache, requirement)) as archive:
            archive.extractall(site)
    _trim_transformers(site, spec)
    _trim(site, (*spec.trims, *_COMMON_TRIMS))
    bnb = site / "bitsandbytes"
    if bnb.is_dir():
        for library in bnb.glob("libbitsandbytes_*.so"):
            if library.name not in ("libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so"):
                library.unlink()
    size = _size_mib(site)
    # What travels is the xz archive (a site folder compresses ~5x): benchmarks/gpu_run.sh unpacks it on the host.
    report("compressing site.tar.xz")
    archive_path = out_dir / ARCHIVE_NAME
    with tarfile.open(archive_path, "w:xz") as archive:
        archive.add(site, arcname="site")
    archive_mib = archive_path.stat().st_size / 2**20
    (out_dir / "MANIFEST.txt").write_text(
        f"Offline site-packages for CPython {python_version} ({', '.join(platforms or DEFAULT_PLATFORMS[:1])}), "
        f"engine {engine}: PYTHONPATH={site}\nBundled: {' '.join(wanted)}\nFrom the host (same version): "
        f"{' '.join(skipped) or '-'}\nNotes: {spec.notes}\n"
        f"Size: {size:.1f} MiB ({ARCHIVE_NAME}: {archive_mib:.1f} MiB)\n",
        encoding="utf-8")
    if archive_mib > max_mib:
        raise QwenRecipesError(f"the {engine} bundle's {ARCHIVE_NAME} is {archive_mib:.1f} MiB, over --max-mib "
                               f"{max_mib:g}: trim more (or raise the limit if the host call can carry it)")
    return BundleResult(site=site, size_mib=size, packages=wanted, skipped=skipped)
