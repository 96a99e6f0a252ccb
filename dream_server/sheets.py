"""Contact sheets: several renders in a labelled grid, for the `visualize` and `atlas` commands."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .visualize import grid_shape

LABEL_HEIGHT = 18
GAP = 4
BACKGROUND = (255, 255, 255)


def contact_sheet(images: np.ndarray, labels: list[str],
                  columns: int | None = None) -> tuple[np.ndarray, dict[str, str]]:  # fmt: skip
    """Images (N, H, W, 3) in a near-square grid (or in rows of `columns`), each with its label
    underneath; an empty label leaves its cell blank.

    Returns the sheet and PNG text entries that record the grid and the labels, so that a
    script can find out what is where without reading the pixels.
    """
    count, height, width, _ = images.shape
    if columns is None:
        rows, columns = grid_shape(count)
    else:
        rows = -(-count // columns)
    cell_height = height + LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * (width + GAP) + GAP, rows * (cell_height + GAP) + GAP),
                      BACKGROUND)  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if not label:
            continue
        row, column = divmod(index, columns)
        left, top = GAP + column * (width + GAP), GAP + row * (cell_height + GAP)
        sheet.paste(Image.fromarray(image), (left, top))
        draw.text((left + 2, top + height + 3), _fitting(draw, font, label, width - 4),
                  fill=(0, 0, 0), font=font)  # fmt: skip
    metadata = {
        "deepdream:grid": f"{rows}x{columns}",
        "deepdream:cell": f"{width}x{height}",
        "deepdream:labels": json.dumps(labels),
    }
    return np.asarray(sheet), metadata


def _fitting(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, text: str, width: int) -> str:
    """The text, cut short with '...' where it is wider than the cell (a long file name)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def exemplar_cells(found: list) -> list[tuple[np.ndarray, str]]:
    """Patches of the user's photos (explore.Exemplar) as cells, each labelled with its photo."""
    return [(exemplar.patch, f"in {exemplar.photo}") for exemplar in found]


def in_rows(rows: list[list[tuple[np.ndarray, str]]]) -> tuple[np.ndarray, dict[str, str]]:
    """A sheet of rows of (image, label) cells of one size, shorter rows left blank at the end:
    a channel's render and its exemplars, say."""
    columns = max(len(row) for row in rows)
    blank = np.zeros_like(rows[0][0][0])
    cells = [cell for row in rows for cell in row + [(blank, "")] * (columns - len(row))]
    images, labels = zip(*cells, strict=True)
    return contact_sheet(np.stack(images), list(labels), columns)


def labelled_sheet(
    images: np.ndarray, labels: list[str], found: list[list] | None = None
) -> tuple[np.ndarray, dict[str, str]]:
    """Renders side by side, each labelled; with exemplars (`found`, explore.Exemplar), a row
    per channel with its patches after it, or for one channel's samples a row of them and a
    row of its patches."""
    if found is None:
        return contact_sheet(images, labels)
    if len(found) == len(images):
        rows = zip(images, labels, found, strict=True)
        return in_rows([[(image, label), *exemplar_cells(row)] for image, label, row in rows])
    return in_rows([list(zip(images, labels, strict=True)), exemplar_cells(found[0])])
