"""Print the ``--params`` JSON of ``make run``'s train-all run, from make's variables.

    python deployments/run_params.py DATA_URI --weights imagenet [--backbones a,b] [--epochs N] [--views N]
        [--image-size N] [--preset NAME] [--classes a,b,c]

Options left out (or given empty) are not sent, so train-all's TrainParams defaults (or the preset) fill them.
``classes`` is a parameter of train-all itself; the others go into its ``params`` object
(:class:`scene.train.params.TrainParams`). Lists are comma-separated (spaces work too).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any


def _names(text: str) -> list[str]:
    return [n for n in re.split(r"[,\s]+", text) if n]


def _whole(name: str) -> Any:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r}: pass a whole number, e.g. {name}=30") from None
    return parse


def run_params(data: str, *, weights: str | None = None, backbones: str = "", epochs: int | None = None,
               views: int | None = None, image_size: int | None = None, preset: str = "",
               classes: str = "") -> dict[str, Any]:
    """train-all's parameters: ``data``, ``params`` (only the training settings given) and ``classes`` if given."""
    given = {"weights": weights, "backbones": _names(backbones) or None, "epochs": epochs, "views": views,
             "image_size": image_size, "preset": preset or None}
    out: dict[str, Any] = {"data": data, "params": {k: v for k, v in given.items() if v is not None}}
    if _names(classes):
        out["classes"] = _names(classes)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA_URI")
    p.add_argument("--weights")
    p.add_argument("--backbones", default="", help="BACKBONES")
    p.add_argument("--epochs", type=_whole("EPOCHS"))
    p.add_argument("--views", type=_whole("VIEWS"))
    p.add_argument("--image-size", type=_whole("IMAGE_SIZE"))
    p.add_argument("--preset", default="")
    p.add_argument("--classes", default="", help="CLASSES")
    a = p.parse_args(argv)
    print(json.dumps(run_params(a.data, weights=a.weights, backbones=a.backbones, epochs=a.epochs, views=a.views,
                                image_size=a.image_size, preset=a.preset, classes=a.classes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
