"""env bundle: which wheels are fetched, built, reused from the cache or left to the host (pip faked, no network)."""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from qwenrecipes.bench import bundle
from qwenrecipes.errors import QwenRecipesError


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal wheel holding one module, so the bundle's unzip has something to show."""
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}.py", f"VERSION = {version!r}\n")


def test_bundle_fetches_only_what_neither_the_cache_nor_the_host_has(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = bundle.BundleSpec(packages=("cached==1.0", "fresh==2.0", "onhost==3.0"),
                             sdists=("cachedsdist==4.0", "purepy==5.0"))
    monkeypatch.setattr(bundle, "bundle_spec", {"fake": spec}.get)
    calls: list[list[str]] = []

    def fake_pip(args: Sequence[str], progress: Callable[[str], None]) -> None:
        calls.append(list(args))
        requirement = args[-1]
        if args[0] == "download" and "--no-binary=:all:" in args:  # the sdist step: leave a source to build
            (Path(args[args.index("-d") + 1]) / f"{requirement.replace('==', '-')}.tar.gz").write_text("sdist")
        elif args[0] == "download":
            _wheel(Path(args[args.index("-d") + 1]), *requirement.split("=="))
        else:  # pip wheel -w cache <source>
            _wheel(Path(args[args.index("-w") + 1]), *Path(args[-1]).name.removesuffix(".tar.gz").split("-"))

    monkeypatch.setattr(bundle, "_pip", fake_pip)
    cache = tmp_path / "cache"
    cache.mkdir()
    _wheel(cache, "cached", "1.0")
    _wheel(cache, "cachedsdist", "4.0")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("onhost==3.0\n", encoding="utf-8")

    result = bundle.build_bundle("fake", "3.12", None, freeze, tmp_path / "out", wheel_cache=cache)

    assert [(c[0], c[-1]) for c in calls] == [("download", "fresh==2.0"), ("download", "purepy==5.0"),
                                              ("wheel", calls[2][-1])]
    assert Path(calls[2][-1]).name == "purepy-5.0.tar.gz"
    assert result.skipped == ["onhost==3.0"]
    assert sorted(p.name for p in result.site.iterdir()) == ["cached.py", "cachedsdist.py", "fresh.py", "purepy.py"]

    calls.clear()  # a second bundle finds everything in the cache
    bundle.build_bundle("fake", "3.12", None, freeze, tmp_path / "out", wheel_cache=cache)
    assert calls == []


# What travels to the GPU host is DIR/site.tar.xz, checked against the size limit.


def _wheel_with(cache: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(cache / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch) -> bundle.BundleSpec:
    fake = bundle.BundleSpec(packages=("tinypkg==1.0", "hostpkg==2.0"), trims=("tinypkg/big",))
    monkeypatch.setattr(bundle, "bundle_spec", {"fake": fake}.get)
    return fake


def test_bundle_writes_a_compressed_archive_of_what_the_host_lacks(tmp_path: Path, spec: bundle.BundleSpec) -> None:
    cache = tmp_path / "wheels"
    cache.mkdir()
    _wheel_with(cache, "tinypkg", "1.0", {"tinypkg/__init__.py": b"X = 1\n", "tinypkg/big/blob.bin": b"0" * 1000,
                                     "tinypkg/tests/test_x.py": b""})
    _wheel_with(cache, "hostpkg", "2.0", {"hostpkg/__init__.py": b""})
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("hostpkg==2.0\ntorch==2.11.0\n", encoding="utf-8")
    result = bundle.build_bundle("fake", "3.12", None, freeze, tmp_path / "out", wheel_cache=cache)
    assert result.packages == ["tinypkg==1.0"] and result.skipped == ["hostpkg==2.0"]
    with tarfile.open(tmp_path / "out" / bundle.ARCHIVE_NAME) as archive:
        names = set(archive.getnames())
    assert "site/tinypkg/__init__.py" in names
    assert not any(n.startswith(("site/hostpkg", "site/tinypkg/big")) for n in names)  # host's / trimmed
    assert "site.tar.xz" in (tmp_path / "out" / "MANIFEST.txt").read_text(encoding="utf-8")


def test_bundle_over_the_limit_is_refused(tmp_path: Path, spec: bundle.BundleSpec) -> None:
    cache = tmp_path / "wheels"
    cache.mkdir()
    _wheel_with(cache, "tinypkg", "1.0", {"tinypkg/__init__.py": os.urandom(300_000)})
    _wheel_with(cache, "hostpkg", "2.0", {"hostpkg/__init__.py": b""})
    with pytest.raises(QwenRecipesError, match=r"site\.tar\.xz is .* MiB, over --max-mib"):
        bundle.build_bundle("fake", "3.12", None, None, tmp_path / "out", wheel_cache=cache, max_mib=0.1)


@pytest.mark.parametrize("trim", [{"keep_modeling": ("qwen3",)}, {"keep_models": ("qwen3",)}])
def test_trimmed_transformers_keeps_the_auto_classes(tmp_path: Path, trim: dict[str, tuple[str, ...]]) -> None:
    """Trimming other models' modeling files must leave transformers/models/auto whole: without modeling_auto.py
    `from transformers import AutoModelForCausalLM` fails (it did, in the swift bundle of device call 10)."""
    models = tmp_path / "transformers" / "models"
    for name, files in {"auto": ("modeling_auto.py", "tokenization_auto.py"), "qwen3": ("modeling_qwen3.py",),
                        "llama": ("modeling_llama.py", "configuration_llama.py")}.items():
        (models / name).mkdir(parents=True)
        for file in ("__init__.py", *files):
            (models / name / file).write_text("# real module\n", encoding="utf-8")
    bundle._trim_transformers(tmp_path, bundle.BundleSpec(packages=("transformers==5.19.0",), **trim))
    assert (models / "auto" / "modeling_auto.py").is_file() and (models / "auto" / "tokenization_auto.py").is_file()
    assert (models / "qwen3" / "modeling_qwen3.py").is_file()
    assert not (models / "llama" / "modeling_llama.py").exists()
