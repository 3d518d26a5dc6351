"""Files the user names (inputs, outputs): checked up front, with messages that say what to do.

* :func:`check_input_file`: exists, is a file (not a directory), is readable.
* :func:`check_output_file`: not a directory, its folder can be created and written (a probe file is
  written, fsynced and removed), so a read-only file system or a full disk is reported *before*
  minutes of judging, not after.
* :func:`iter_utf8_lines`: lines of a text file; a byte that is not UTF-8 is reported with the line
  and the byte offset (in the line and in the file).
* :func:`os_error_hint`: what to do about an OSError (full disk, read-only file system, permissions).
* :func:`fallback_path`: where results go when the output cannot be written after the work is done.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from engine.errors import UserError

DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(err: BaseException) -> bool:
    """An OSError for a full disk (or quota), or SQLite's "database or disk is full"."""
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    return "disk is full" in str(err).lower() or "no space left" in str(err).lower()


def disk_full_at(path: str | os.PathLike) -> bool:
    """Whether the file system holding ``path`` has (almost) no space left (< 1 MiB)."""
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < 1024 * 1024
    except OSError:
        return False


#: What a full disk leaves in a log: OS, SQLite and PyTorch wordings.
DISK_FULL_MARKERS = ("no space left on device", "database or disk is full", "disk is full", "errno 28",
                     "file write failed")


def log_says_disk_full(lines: list[str]) -> str | None:
    """The last log line that says the disk was full, if any."""
    for line in reversed(lines):
        low = line.lower()
        if any(m in low for m in DISK_FULL_MARKERS[:4]):
            return line.strip()
    return None


def os_error_hint(err: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """A hint for an OSError, or None when there is nothing specific to say."""
    where = f" ({path})" if path else ""
    code = getattr(err, "errno", None)
    if is_disk_full(err):
        return f"the disk is full{where}: free some space (df -h shows which file system), then run the command again"
    if code == errno.EROFS or "read-only file system" in str(err).lower():
        return f"the file system is read-only{where}: choose a path on a writable file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: choose a path you can write, or fix its permissions"
    if code == errno.EISDIR:
        return f"{path or 'the path'} is a directory: give a file path"
    if code == errno.ENOTDIR:
        return f"a part of {path or 'the path'} is a file, not a directory"
    return None


def _reason(err: OSError) -> str:
    return os.strerror(err.errno).lower() if err.errno else str(err)


def check_input_file(path: str | os.PathLike, what: str, *, hint: str | None = None) -> Path:
    """``path`` as a Path; UserError when it is missing, a directory or unreadable."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {p} does not exist", hint=hint)
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, not a file", hint=hint or f"give {what} a file")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {p} cannot be read (permission denied)", hint="fix its permissions")
    return p


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, after checking it can be written; UserError naming the problem otherwise.

    Creates the parent folder when missing. Writes, fsyncs and removes a small probe file next to the
    target, which catches a read-only file system, missing permissions and (usually) a full disk.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory", hint=f"give {what} a file path, e.g. {p / 'out.jsonl'}")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{what} {p}: cannot create the folder {parent} ({_reason(err)})",
                        hint=os_error_hint(err, parent)) from None
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p} cannot be written (permission denied)", hint="choose another file or fix its permissions")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise UserError(f"{what} {p} cannot be written: {_reason(err)}", hint=os_error_hint(err, parent)) from None
    return p


def iter_utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line; UserError naming the line and byte offset of a non-UTF-8 byte."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.start + 1].hex()
                raise UserError(
                    f"{path}: line {lineno} is not UTF-8 text: byte 0x{bad} at column {e.start + 1} "
                    f"(byte offset {offset + e.start} in the file)",
                    hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or remove that byte") from None
            offset += len(raw)
            yield lineno, text


def fallback_path(name: str, near: str | os.PathLike | None = None) -> Path:
    """A writable place for results that could not go where asked: next to ``near`` (the run store's
    folder), else the temp folder. The file name carries a timestamp, so nothing is overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = [Path(near)] if near else []
    candidates.append(Path(tempfile.gettempdir()))
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder / f"{name}.{stamp}.{os.getpid()}.jsonl"
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / f"{name}.{stamp}.{os.getpid()}.jsonl"
