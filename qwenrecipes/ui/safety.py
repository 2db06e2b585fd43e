"""What keeps a local web app local: the per-launch token and project-confined paths.

A page on another site can make the browser send requests to 127.0.0.1 (CSRF), and a DNS name that resolves
to 127.0.0.1 can read the answers (DNS rebinding). So: the Host header must name this machine's loopback,
anything that starts a process or writes a file needs the token printed at start-up (sent in a header, which
a cross-site form cannot set), and no path leaves the project folder, whatever `..` or symlinks it holds.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path, PurePosixPath

from qwenrecipes.errors import QwenRecipesError

TOKEN_HEADER = "x-qwenrecipes-token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_PATH_CHARS = 1000


class Forbidden(QwenRecipesError):
    """A request the app refuses on principle (no token, a path outside the project): HTTP 403."""


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())


def project_path(project: Path, relative: str, *, must_exist: bool = True) -> Path:
    """`relative` (a path as the page sends it) resolved inside `project`, or Forbidden.

    Resolving follows every symlink, so a link inside the project that points outside is refused like `..`.
    Absolute paths are refused outright: the page only ever names files relative to the project."""
    if not isinstance(relative, str) or not relative.strip() or len(relative) > MAX_PATH_CHARS or "\x00" in relative:
        raise Forbidden("a path relative to the project folder is required")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative.startswith("~"):
        raise Forbidden(f"{relative!r}: only paths inside the project folder are served (no leading / or ~)")
    root = project.resolve()
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise Forbidden(f"{relative!r} leads outside the project folder {root}")
    if must_exist and not target.exists():
        raise QwenRecipesError(f"{relative}: no such file in {root}")
    return target


def relative_to_project(project: Path, path: Path) -> str:
    """How the page names `path` (posix, relative to the project); the path itself when it is outside."""
    try:
        return path.resolve().relative_to(project.resolve()).as_posix()
    except ValueError:
        return str(path)
