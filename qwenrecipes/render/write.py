"""Writing a render folder without following symlinks, escaping the folder or leaving half a folder behind.

- Every path component under the folder is opened with O_NOFOLLOW relative to its parent's descriptor, and
  each file is written to a fresh temporary name (O_EXCL) and renamed over its final name: a symlink planted
  at ``out/data/train.jsonl`` (or at ``out/data``) is refused, never written through.
- ``render -o`` builds the whole folder aside (a hidden sibling, same filesystem) and renames it into place:
  a failure while writing (a full disk, a quota) leaves the previous folder as it was and names the file.
- An existing folder is replaced only when it is empty or holds nothing but an earlier render (its
  ``.qwenrecipes-render`` manifest lists every file); anything else (a run folder, someone's files) is
  refused unless ``force``, which writes the rendered files into it and keeps the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TextIO

from qwenrecipes.errors import QwenRecipesError

MANIFEST = ".qwenrecipes-render"
Writer = Callable[[TextIO], None]


def _parts(relative: str, root: Path) -> tuple[str, ...]:
    pure = PurePosixPath(relative)
    if pure.is_absolute() or not pure.parts or any(p in ("..", ".") for p in pure.parts) or "\\" in relative:
        raise QwenRecipesError(f"refusing to write {relative!r} outside {root}")
    return pure.parts


def _open_dir(root_fd: int, parts: tuple[str, ...], shown: Path, create: bool = True) -> int:
    """A new descriptor of root/parts..., each component opened without following a symlink."""
    fd = os.dup(root_fd)
    here = shown
    for part in parts:
        here = here / part
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                raise QwenRecipesError(f"refusing to write through {here}: it is a symlink, which could point "
                                       "outside the folder (qwenrecipes never follows one when writing)")
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise QwenRecipesError(f"could not create folder {here}: {exc.strerror}") from None
        except QwenRecipesError:
            os.close(fd)
            raise
        os.close(fd)
        fd = child
    return fd


def write_file(root: Path, relative: str, write: Writer, *, shown_root: Path | None = None,
               executable: bool = False) -> Path:
    """Write root/relative atomically through ``write(handle)``; the error names shown_root/relative."""
    parts = _parts(relative, root)
    shown = (shown_root or root) / relative
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        reason = "it is a symlink (never followed when writing)" if root.is_symlink() else exc.strerror
        raise QwenRecipesError(f"cannot write into {shown_root or root}: {reason}") from None
    try:
        dir_fd = _open_dir(root_fd, parts[:-1], shown_root or root)
    finally:
        os.close(root_fd)
    name = parts[-1]
    temporary = f".{name}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            mode = os.lstat(name, dir_fd=dir_fd).st_mode
            if stat.S_ISLNK(mode):
                raise QwenRecipesError(f"refusing to write {shown}: it is a symlink, which could point outside "
                                       "the folder (qwenrecipes never follows one when writing)")
            if stat.S_ISDIR(mode):
                raise QwenRecipesError(f"cannot write {shown}: a folder of that name is in the way")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)  # a leftover of a killed render by this pid number
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o777 if executable
                         else 0o666, dir_fd=dir_fd)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                write(handle)
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise QwenRecipesError(f"could not write {shown}: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    return root / relative


def _entries(folder: Path) -> Iterator[str]:
    """Every entry under folder (relative POSIX paths), symlinks listed and never followed."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath).relative_to(folder)
        for name in [*dirnames, *filenames]:
            yield (base / name).as_posix()


def _previous_render(folder: Path) -> set[str] | None:
    """The files an earlier render wrote here (its manifest), or None when there is no readable manifest."""
    path = folder / MANIFEST
    try:
        if path.is_symlink():
            return None
        listed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
        return None
    return set(listed)


def foreign_entries(folder: Path) -> list[str]:
    """What in folder a render did not write (a run's outputs, a user's files); [] when it may be replaced."""
    ours = _previous_render(folder) or set()
    folders = {parent.as_posix() for x in ours for parent in PurePosixPath(x).parents}
    out = []
    for entry in _entries(folder):
        path = folder / entry
        link = path.is_symlink()
        if entry == MANIFEST or (not link and ((entry in ours and path.is_file()) or
                                               (entry in folders and path.is_dir()))):
            continue
        out.append(entry)
    return out


def publish(out_dir: Path, build: Callable[[Path], list[str]], *, force: bool = False) -> None:
    """Build the folder aside with ``build(staging) -> relative files written`` and rename it into place."""
    if out_dir.is_symlink():
        raise QwenRecipesError(f"{out_dir} is a symlink: give the real folder (qwenrecipes never writes "
                               "through one)")
    if out_dir.exists() and not out_dir.is_dir():
        raise QwenRecipesError(f"{out_dir} exists and is not a folder")
    foreign = foreign_entries(out_dir) if out_dir.exists() else []
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise QwenRecipesError(f"{out_dir} already holds files a render did not write ({shown}): it may be a run "
                               "folder or someone's work. Choose a new folder, or pass --force to write the "
                               "rendered files into it (the other files are kept)")
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".rendering", dir=parent))
    except OSError as exc:
        raise QwenRecipesError(f"could not create a folder next to {out_dir}: {exc.strerror or exc}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the folder is the user's, like mkdir's
        written = build(staging)
        write_file(staging, MANIFEST, lambda h: h.write(json.dumps(sorted(written), indent=1) + "\n"),
                   shown_root=out_dir)
        if foreign:  # --force into a folder with other content: move the files in, keep the rest
            for relative in [*written, MANIFEST]:
                _move_in(staging, out_dir, relative)
        elif out_dir.exists():
            _swap(staging, out_dir)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, out_dir: Path) -> None:
    """Replace an empty folder or an earlier render with the new one: two renames, the old one removed
    after the new one is in place (or put back if that fails)."""
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.absolute().parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError as exc:
        os.rename(old, out_dir)
        raise QwenRecipesError(f"could not move the new render into {out_dir}: {exc.strerror}") from None
    shutil.rmtree(old, ignore_errors=True)


def _move_in(staging: Path, out_dir: Path, relative: str) -> None:
    parts = _parts(relative, out_dir)
    root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        src_fd = _open_dir(root_fd, parts[:-1], staging, create=False)
    finally:
        os.close(root_fd)
    root_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        dst_fd = _open_dir(root_fd, parts[:-1], out_dir)
    except BaseException:
        os.close(src_fd)
        raise
    finally:
        os.close(root_fd)
    try:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(parts[-1], dir_fd=dst_fd).st_mode):
                raise QwenRecipesError(f"cannot write {out_dir / relative}: a folder of that name is in the way")
        # rename() replaces a symlink at the destination itself; it never writes through it.
        os.replace(parts[-1], parts[-1], src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except OSError as exc:
        raise QwenRecipesError(f"could not write {out_dir / relative}: {exc.strerror}") from None
    finally:
        os.close(src_fd)
        os.close(dst_fd)
