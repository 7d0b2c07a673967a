"""What runs each chapter needs, as named configs for a preset.

A chapter asks for its runs with ``chapter_runs("03_byol", preset)`` and hands them to
``sslnb.runs.launch``; ``make book`` trains the same list for every chapter before executing them, so
the chapters themselves only load finished runs.
"""

from __future__ import annotations

from .config import Config


def byol_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                 data_root: str = "data") -> dict[str, Config]:
    """BYOL with the seed's two augmentation pipelines, plus the references the chapter compares with.

    - ``byol``: the seed's first BYOL row (``normal`` augmentation, all three head BNs);
    - ``byol aug+``: the seed's ``aug+`` row;
    - ``random init``: the same network untrained (0 epochs), kNN and linear probe;
    - ``supervised``: the same backbone trained with labels (only on the embedded dataset, where it
      tells the reader how much the images allow).
    """
    extra = {"device": device, "data_root": data_root, **({"dataset": dataset} if dataset else {})}
    base = Config.from_preset(preset, "byol", **extra)
    runs = {
        "byol": base.replace(augment="normal"),
        "byol aug+": base.replace(augment="aug+"),
        "random init": base.replace(augment="normal", epochs=0),
    }
    if base.dataset == "digits":
        runs["supervised"] = Config.from_preset(preset, "supervised", **extra)
    return runs


CHAPTERS = {"03_byol": byol_chapter}


def chapter_runs(chapter: str, preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                 data_root: str = "data") -> dict[str, Config]:
    """The named configs chapter ``chapter`` needs at ``preset`` (``dataset`` overrides the preset's)."""
    if chapter not in CHAPTERS:
        raise ValueError(f"chapter={chapter!r} is not known; choose one of: {', '.join(CHAPTERS)}")
    return CHAPTERS[chapter](preset, dataset, device, data_root)
