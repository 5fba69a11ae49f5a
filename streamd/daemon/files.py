"""Modes of what streamd keeps on disk: camera footage (recordings, stored day frames) is readable by the
service's user and group only, whatever the umask of whoever started the process.

The modes are given when a file or folder is created, so a permissive umask (0, or systemd's default 0022)
cannot widen them; a stricter umask still narrows them. The systemd units also set UMask=0027 for everything
else the process or its libraries create.
"""
from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o640
FOLDER_MODE = 0o750


def make_folder(folder: Path) -> None:
    """Create `folder` and its missing parents, each FOLDER_MODE (Path.mkdir(parents=True) gives the parents
    the umask's mode); a folder that exists is left as it is."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        try:
            os.mkdir(path, FOLDER_MODE)
        except FileExistsError:  # made meanwhile (another camera's thread)
            pass


def create_file(path: Path, exclusive: bool = False) -> int:
    """Open `path` for writing, created FILE_MODE (truncated if it exists; FileExistsError with `exclusive`).
    Returns the file descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    return os.open(path, flags, FILE_MODE)


def write_file(path: Path, data: bytes) -> None:
    with os.fdopen(create_file(path), "wb") as f:
        f.write(data)
