"""Offline bundles for air-gapped GPU hosts: what travels is DIR/site.tar.xz, checked against the size limit.
Runs without network: the wheels are made here and put in the wheel cache the builder looks in first."""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from qwenrecipes import bundle
from qwenrecipes.errors import QwenRecipesError


def _wheel(cache: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(cache / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch) -> bundle.BundleSpec:
    fake = bundle.BundleSpec(packages=("tinypkg==1.0", "hostpkg==2.0"), trims=("tinypkg/big",))
    monkeypatch.setitem(bundle.SPECS, "fake", fake)
    return fake


def test_bundle_writes_a_compressed_archive_of_what_the_host_lacks(tmp_path: Path, spec: bundle.BundleSpec) -> None:
    cache = tmp_path / "wheels"
    cache.mkdir()
    _wheel(cache, "tinypkg", "1.0", {"tinypkg/__init__.py": b"X = 1\n", "tinypkg/big/blob.bin": b"0" * 1000,
                                     "tinypkg/tests/test_x.py": b""})
    _wheel(cache, "hostpkg", "2.0", {"hostpkg/__init__.py": b""})
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
    _wheel(cache, "tinypkg", "1.0", {"tinypkg/__init__.py": os.urandom(300_000)})
    _wheel(cache, "hostpkg", "2.0", {"hostpkg/__init__.py": b""})
    with pytest.raises(QwenRecipesError, match=r"site\.tar\.xz is .* MiB, over --max-mib"):
        bundle.build_bundle("fake", "3.12", None, None, tmp_path / "out", wheel_cache=cache, max_mib=0.1)
