"""Copying trees of immutable files: hard links where possible, copies otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.util.hashing import iter_content_files


def link_tree(src: Path, dst: Path, *, link: bool = True) -> None:
    """Mirror the content files of `src` under `dst`.

    Hard links are safe only for files nobody edits in place (cache outputs, HF blobs); pass
    `link=False` for a user's own directory.
    """
    for f in iter_content_files(src):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        real = f.resolve()
        try:
            if not link:
                raise OSError
            os.link(real, target)
        except OSError:
            shutil.copy2(real, target)
