"""Shared fixtures: real photos, the embedded model loaded once, a quiet CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dream_server.models import FeatureModel, load_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "dream_server" / "samples"
PHOTOS = Path(__file__).resolve().parent / "photos"


def photo(name: str, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """A real photo as (H, W, C) uint8, optionally resized to (width, height)."""
    folder = SAMPLES if (SAMPLES / name).exists() else PHOTOS
    image = Image.open(folder / name).convert(mode)
    if size is not None:
        image = image.resize(size, Image.BICUBIC)
    pixels = np.array(image)
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    # Tests run where CI runs: two cores. Pinning keeps timings and results comparable.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def effnet() -> FeatureModel:
    return load_model("effnet-lite0")


@pytest.fixture(scope="session")
def cat() -> np.ndarray:
    return photo("chelsea.png")


@pytest.fixture(scope="session")
def small_cat() -> np.ndarray:
    return photo("chelsea.png", (192, 128))
