"""What the ``scene`` command modules share (errors, settings, S3 client, progress bars, loading a dataset), so that
none of them imports :mod:`scene.cli.main` (no import cycle)."""

from __future__ import annotations

import sys
from typing import Any


class CliError(RuntimeError):
    """A user-facing error: printed without a traceback."""


def settings_from_env() -> Any:
    """:class:`scene.settings.Settings` from the environment (``SCENE_*``, ``AWS_*``, ``SCENE_CONFIG``)."""
    from scene.settings import Settings

    return Settings.from_env()


def s3_for(*uris: str | None) -> Any:
    """An S3 client when any argument is an s3:// URI, else None."""
    if any(u and str(u).startswith("s3://") for u in uris):
        from scene.data.storage import s3_client

        return s3_client(settings_from_env())
    return None


class Bars:
    """One tqdm progress bar per stage, fed by the library's ``progress(stage, done, total)`` callbacks."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="it", leave=True, file=sys.stderr,
                                           disable=None)  # bars on a terminal only
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[stage]  # the same stage may run again (e.g. a second split)


def load_dataset(data: str, test: str | None, classes: str | None, bars: Bars) -> Any:
    """The dataset at ``data`` (and ``test``), its image reads shown on ``bars``."""
    from scene.data import packs
    from scene.data.dataset import build_dataset

    names = [c.strip() for c in classes.split(",")] if classes else None
    s3 = s3_for(data, test)
    packer = packs.writer_for(data, settings_from_env().artifact_bucket, s3) if s3 is not None else None
    return build_dataset(data, test, class_names=names, s3=s3, packer=packer,
                         progress=lambda d, t: bars("reading images", d, t))
