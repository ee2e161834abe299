"""What every output of the demo says about itself: the demo note, and figure titles that carry it.

Kept in a module of its own (not beside the results table) so that the stages that print it depend on
this text only, not on the table's code.
"""

from __future__ import annotations

import textwrap

DEMO_NOTE = ("demo = synthetic scenes + stand-in backbones (colour-prototype 'CLIP', appearance-kernel 'DINO'; "
             "lposs/demo/): shows what label propagation does to noisy seeds, says nothing about CLIP/DINO")


def caption(title: str, datasets: list[str], width: int = 110) -> str:
    """A figure title, with the demo note (wrapped) when the demo is among the datasets."""
    return title + ("\n" + textwrap.fill(DEMO_NOTE, width) if "demo" in datasets else "")
