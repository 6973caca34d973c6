"""Package data potwatch reads at run time: the trained `tiny` checkpoint and the demo video.

Every caller finds them here, beside this file, so a checkout and an installed wheel behave alike from any
working folder, wherever the code that asks sits. (`make_demo_video.py` and the README's screenshot belong
to the checkout only.)"""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
TINY_NAME = "tiny"
DEMO_VIDEO_NAME = "demo.mp4"
# how the README and users name the demo video: from the checkout's root, or bare
DEMO_VIDEO_SPELLINGS = (Path("assets") / DEMO_VIDEO_NAME, Path(DEMO_VIDEO_NAME))


def tiny_folder() -> Path:
    """The trained `tiny` checkpoint's folder (config.json, model.safetensors, tokenizer, ...)."""
    return FOLDER / TINY_NAME


def demo_video() -> Path:
    """The shipped 30-second demo video (a red box shows from 12.0 to 14.5 s)."""
    return FOLDER / DEMO_VIDEO_NAME


def packaged_or_given(path: str | os.PathLike) -> Path:
    """`path` itself, unless it is missing and spells the demo video (`assets/demo.mp4`, `demo.mp4`): then the
    packaged copy, so the README's commands also run outside the checkout."""
    given = Path(path)
    if not given.exists() and given in DEMO_VIDEO_SPELLINGS and demo_video().is_file():
        return demo_video()
    return given
