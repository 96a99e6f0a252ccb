"""Reading and writing image files for the `deepdream` command (PNG, JPEG, WebP, TIFF)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import InvalidImage
from .imaging import MAX_PIXELS

Image.MAX_IMAGE_PIXELS = MAX_PIXELS

FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
CAN_STORE_ALPHA = {"PNG", "WEBP", "TIFF"}
KEPT_METADATA = ("icc_profile", "dpi")


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray
    metadata: dict[str, Any]
    """What a dream of the image should carry over: its ICC colour profile and resolution."""
    frames: int
    """How many frames an animated GIF, WebP or PNG holds (1 for a still image)."""


def read_image(path: Path) -> np.ndarray:
    """(H, W, C) pixels: uint8, or uint16 for 16-bit gray, or float32 for 32-bit float gray;
    written back with `write_image`, they keep their depth and layout. A photo's EXIF
    orientation is applied, so that it is upright as every viewer shows it."""
    return load_image(path).pixels


def load_image(path: Path, eight_bits_will_do: bool = False) -> LoadedImage:
    """The pixels as `read_image` gives them, with what else the file says, read once.

    A 16-bit colour file is refused (Pillow reads only its high bytes), unless
    `eight_bits_will_do`: for what ends up in 8 bits anyway, such as an animation's frames.
    """
    try:
        with warnings.catch_warnings():
            # The size is known from the header: refuse a huge one before decoding a byte,
            # with our own message rather than Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise Image.DecompressionBombError()
                if not eight_bits_will_do:
                    _refuse_16_bit_colour(path, opened)
                frames = getattr(opened, "n_frames", 1)  # counting seeks: before the pixels load
                opened.load()
                ImageOps.exif_transpose(opened, in_place=True)
                image = opened
                metadata = {key: opened.info[key] for key in KEPT_METADATA if opened.info.get(key)}
    except FileNotFoundError:
        raise InvalidImage(f"{path} does not exist: check the path.") from None
    except IsADirectoryError:
        raise InvalidImage(f"{path} is a folder: give an image file.") from None
    except PermissionError:
        raise InvalidImage(f"{path} cannot be read (permission denied).") from None
    except UnidentifiedImageError:
        raise InvalidImage(
            f"{path} is not an image Pillow can read: use PNG, JPEG, WebP or TIFF."
        ) from None
    except Image.DecompressionBombError:
        raise InvalidImage(
            f"{path} is larger than {MAX_PIXELS // 1_000_000} megapixels: scale it down first."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidImage(f"{path} is damaged or truncated ({err}): re-export it.") from None
    if image.width == 0 or image.height == 0:
        raise InvalidImage(f"{path} is empty ({image.width}x{image.height} pixels).")
    return LoadedImage(_pixels(image), metadata, frames)


def rgb8(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB, what animations and video frames are made of: gray spread to the three
    channels, alpha dropped, 16-bit and float scaled."""
    if pixels.dtype == np.uint16:
        pixels = np.rint(pixels / 257.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    colour = pixels[:, :, :3] if pixels.shape[2] >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(colour)


def _pixels(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)[:, :, None]
    if image.mode == "I":
        return np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)[:, :, None]
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)[:, :, None]
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = image.mode in ("PA", "La") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


def _refuse_16_bit_colour(path: Path, image: Image.Image) -> None:
    """Pillow reads 16-bit colour PNG and TIFF files as 8 bits: refuse rather than cut them."""
    if image.format == "PNG":
        deep = image.mode in ("RGB", "RGBA", "LA") and _png_bit_depth(image) == 16
    elif image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        deep = image.mode in ("RGB", "RGBA", "LA") and max(bits, default=8) > 8
    else:
        deep = False
    if deep:
        raise InvalidImage(
            f"{path} has 16 bits per colour channel, which this command cannot keep: convert it "
            "to 8 bits first (GIMP: Image > Precision > 8 bit integer; ImageMagick: "
            "`convert IN -depth 8 OUT`), or dream on it in GIMP, which keeps 16 bits."
        )


def _png_bit_depth(image: Image.Image) -> int:
    header = image.fp
    position = header.tell()
    try:
        header.seek(24)  # signature, IHDR length and type, width, height: then the bit depth
        return header.read(1)[0]
    finally:
        header.seek(position)


def read_mask(path: Path) -> np.ndarray:
    """A gray mask file as (H, W) values; white dreams, black keeps the original."""
    pixels = read_image(path)
    if pixels.shape[2] >= 3:
        pixels = np.asarray(Image.fromarray(pixels[:, :, :3]).convert("L"))[:, :, None]
    return pixels[:, :, 0]


def check_writable(path: Path, pixels: np.ndarray) -> str:
    """The Pillow format that stores `pixels` at `path`; InvalidImage before any work if none."""
    image_format = FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise InvalidImage(
            f"Cannot write '{path.suffix or path.name}' files: name the output .png, .jpg, "
            ".webp or .tif."
        )
    if pixels.shape[2] in (2, 4) and image_format not in CAN_STORE_ALPHA:
        raise InvalidImage(
            f"{image_format} cannot store transparency and the input has some: write .png, "
            ".webp or .tif to keep it."
        )
    if pixels.dtype == np.uint16 and image_format not in ("PNG", "TIFF"):
        raise InvalidImage(f"{image_format} cannot store 16-bit images: write .png or .tif.")
    if pixels.dtype == np.float32 and image_format != "TIFF":
        raise InvalidImage("32-bit float images can only be written as TIFF: use .tif.")
    folder = path.parent
    if not folder.is_dir():
        raise InvalidImage(f"The folder {folder} does not exist: create it or write elsewhere.")
    if not os.access(folder, os.W_OK):
        raise InvalidImage(f"Cannot write into {folder} (permission denied).")
    return image_format


def write_image(
    path: Path,
    pixels: np.ndarray,
    text: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write atomically (see `written_whole`), so a failure or an interruption never leaves a
    half-written image. `text` entries are stored in PNG files; `metadata` (from
    `image_metadata`) keeps the colour profile and the resolution."""
    image_format = check_writable(path, pixels)
    image = Image.fromarray(pixels if pixels.shape[2] > 1 else pixels[:, :, 0])
    with written_whole(path) as partial, partial.open("r+b") as out:
        options: dict = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
        options.update(metadata or {})
        if text and image_format == "PNG":
            options["pnginfo"] = PngImagePlugin.PngInfo()
            for key, value in text.items():
                options["pnginfo"].add_text(key, value)
        image.save(out, format=image_format, **options)


def new_partial(path: Path) -> Path:
    """A new empty file beside `path` to write it under first: created exclusively, under a
    name nobody can guess, readable by this user only until it takes `path`'s name (see
    `take_name`). A link planted in a shared folder is never written through."""
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}",
                                dir=path.parent)  # fmt: skip
    os.close(fd)
    return Path(name)


def take_name(partial: Path, path: Path) -> None:
    """A finished partial file becomes `path`, with the mode a new file of that name gets."""
    os.chmod(partial, _new_file_mode(path))
    os.replace(partial, path)


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A partial file (see `new_partial`) to write `path`'s content into: once the block ends
    well it is `path`; otherwise it is gone, and `path` is as it was."""
    partial = new_partial(path)
    try:
        yield partial
        take_name(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _new_file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give: the old file's, or 0666 less the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
