"""The grammar cache: lark's analysed LALR tables kept between runs, so `dgm check` starts fast.

The cache is JSON with a SHA-256 of its content on its first line — never a pickle (lark's own
``cache=`` unpickles the file before checking anything, so a file planted there would run
code) — kept in ``$XDG_CACHE_HOME/dgmlang`` and read only from a regular file of the current
user's that no one else may write, in a folder of the same kind. Anything else is rebuilt
(about 40 ms).

>>> key = cache_key("start: NAME")
>>> len(key), read_cache("/nonexistent/grammar.json.cache", key) is None
(64, True)
"""
from __future__ import annotations

import contextlib
import hashlib
import os

import lark
from lark import Lark

__all__ = ["BUILD_OPTIONS", "cache_file", "cache_key", "read_cache", "write_cache"]

#: The parser's build options; `_parser` passes the run-time ones (transformer, postlex).
BUILD_OPTIONS = {"parser": "lalr", "lexer": "contextual", "maybe_placeholders": True}
#: Names the layout of the grammar cache (the first line of the file holds it).
CACHE_LAYOUT = "dgmlang-grammar-cache-json-1"
#: A cache file larger than this is not read (the real one is about 120 kB).
CACHE_MAX_BYTES = 16 * 2**20
_TUPLE, _DICT = "\x00tuple", "\x00dict"


def cache_file(grammar: str) -> str | None:
    """Where the analysed grammar is kept, so later start-ups skip the LALR analysis:
    ``$XDG_CACHE_HOME/dgmlang`` (``~/.cache/dgmlang``), made private (0o700) when new.

    None (no cache) when the folder cannot be made, or is not the current user's own, or
    others may write to it. The cache is JSON read by `read_cache` — never a pickle, so a
    file planted there cannot run code — and only from a regular file of the current user's
    that no one else may write.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "dgmlang")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(info.st_mode) or not _private(info):
        return None
    return os.path.join(folder, f"grammar-{cache_key(grammar)[:16]}-lark{lark.__version__}.json.cache")


def _private(info: os.stat_result) -> bool:
    """Owned by the current user (where there are users) and writable by no one else."""
    import stat

    owner = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owner and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cache_key(grammar: str) -> str:
    """What the cached tables depend on: the grammar, the options, lark's version."""
    text = "\n".join((CACHE_LAYOUT, lark.__version__, repr(sorted(BUILD_OPTIONS.items())), grammar))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _encode(value):
    """lark's serialized parser (dicts with int keys, tuples) as JSON-able values."""
    if isinstance(value, dict):
        if all(type(k) is str and not k.startswith("\x00") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {_DICT: [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    raise TypeError(f"cannot cache a {type(value).__name__}")


def _decode(obj: dict):
    if len(obj) == 1:
        if _TUPLE in obj:
            return tuple(obj[_TUPLE])
        if _DICT in obj:
            return {k: v for k, v in obj[_DICT]}
    return obj


def read_cache(path: str, key: str) -> dict | None:
    """The cached parser data at `path`, or None: not there, not a regular file of the
    current user's that only they may write, too big, made for another grammar, options or
    lark, or damaged (its SHA-256 does not match)."""
    import json
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        handle = os.open(path, flags)
    except OSError:
        return None
    try:
        with os.fdopen(handle, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or not _private(info) or info.st_size > CACHE_MAX_BYTES:
                return None
            header = file.readline(512).decode("ascii").split()
            body = file.read(CACHE_MAX_BYTES)
        if header != [CACHE_LAYOUT, key, hashlib.sha256(body).hexdigest()]:
            return None
        cached = json.loads(body, object_hook=_decode)
        return cached if isinstance(cached, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt
        return None


def write_cache(path: str, key: str, parser: Lark) -> None:
    """Keep `parser`'s tables at `path` (a private temporary file, then `os.replace`);
    a cache that cannot be written is skipped."""
    import json
    import tempfile

    from lark.grammar import Rule
    from lark.lark import _LOAD_ALLOWED_OPTIONS
    from lark.lexer import TerminalDef

    data, memo = parser.memo_serialize([TerminalDef, Rule])
    data["options"] = {n: v for n, v in data["options"].items() if n not in _LOAD_ALLOWED_OPTIONS}
    try:
        body = json.dumps(_encode({"data": data, "memo": memo}), separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError):
        return
    header = f"{CACHE_LAYOUT} {key} {hashlib.sha256(body).hexdigest()}\n".encode("ascii")
    try:
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(header + body)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
