"""env bundle: which wheels are fetched, built, reused from the cache or left to the host (pip faked, no network)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from qwenrecipes import bundle


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal wheel holding one module, so the bundle's unzip has something to show."""
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}.py", f"VERSION = {version!r}\n")


def test_bundle_fetches_only_what_neither_the_cache_nor_the_host_has(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = bundle.BundleSpec(packages=("cached==1.0", "fresh==2.0", "onhost==3.0"),
                             sdists=("cachedsdist==4.0", "purepy==5.0"))
    monkeypatch.setitem(bundle.SPECS, "fake", spec)
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
