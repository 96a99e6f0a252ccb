"""Contact sheets: several renders in a labelled grid, for the `visualize` and `atlas` commands."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .visualize import grid_shape

LABEL_HEIGHT = 18
GAP = 4
BACKGROUND = (255, 255, 255)


def contact_sheet(images: np.ndarray, labels: list[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Images (N, H, W, 3) in a near-square grid, each with its label underneath.

    Returns the sheet and PNG text entries that record the grid and the labels, so that a
    script can find out what is where without reading the pixels.
    """
    count, height, width, _ = images.shape
    rows, columns = grid_shape(count)
    cell_height = height + LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * (width + GAP) + GAP, rows * (cell_height + GAP) + GAP),
                      BACKGROUND)  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        row, column = divmod(index, columns)
        left, top = GAP + column * (width + GAP), GAP + row * (cell_height + GAP)
        sheet.paste(Image.fromarray(image), (left, top))
        draw.text((left + 2, top + height + 3), label, fill=(0, 0, 0), font=font)
    metadata = {
        "deepdream:grid": f"{rows}x{columns}",
        "deepdream:cell": f"{width}x{height}",
        "deepdream:labels": json.dumps(labels),
    }
    return np.asarray(sheet), metadata
