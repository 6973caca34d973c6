"""Uploaded videos: how big they may be, where Gradio keeps them, and deleting the ones no tab plays.

Gradio refuses an upload over `MAX_UPLOAD_MB` before it reaches potwatch (HTTP 413) and deletes what
is left in its upload folder when the server stops. In between, potwatch deletes an upload as soon as
no tab plays it any more (another video was chosen, or the tab closed), so uploads take at most one
file per tab on disk however long the server runs. Only files inside the upload folder are ever
deleted: the demo video and anything else on the server are never touched."""

from __future__ import annotations

import contextlib
from pathlib import Path

MAX_UPLOAD_MB = 200  # per file; Gradio counts a MB as 2**20 bytes
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20


def upload_folder() -> Path:
    """Gradio's upload folder ($GRADIO_TEMP_DIR, else <tmp>/gradio), resolved."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def is_upload(path: str | Path) -> bool:
    """True for a file inside Gradio's upload folder."""
    return Path(path).resolve().is_relative_to(upload_folder())


def delete_upload(path: str | Path) -> bool:
    """Delete an uploaded file and its per-upload folder when that is left empty; True when deleted.
    Files outside the upload folder are left alone."""
    path = Path(path).resolve()
    root = upload_folder()
    if not path.is_relative_to(root) or path == root or not path.is_file():
        return False
    path.unlink(missing_ok=True)
    if path.parent != root:
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when empty
    return True
