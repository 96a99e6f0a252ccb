"""Reading and writing image files for the `deepdream` command (PNG, JPEG, WebP, TIFF)."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import warnings
import zlib
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
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray
    metadata: dict[str, Any]
    """What a dream of the image should carry over: its ICC colour profile and resolution."""
    frames: int
    """How many frames an animated GIF, WebP or PNG holds (1 for a still image)."""


def read_image(path: Path) -> np.ndarray:
    """(H, W, C) pixels: uint8, or uint16 for 16-bit files (gray or colour), or float32 for
    32-bit float gray; written back with `write_image`, they keep their depth and layout. A
    photo's EXIF orientation is applied, so that it is upright as every viewer shows it."""
    return load_image(path).pixels


def load_image(path: Path) -> LoadedImage:
    """The pixels as `read_image` gives them, with what else the file says, read once."""
    try:
        with warnings.catch_warnings():
            # The size is known from the header: refuse a huge one before decoding a byte,
            # with our own message rather than Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise Image.DecompressionBombError()
                metadata = {key: opened.info[key] for key in KEPT_METADATA if opened.info.get(key)}
                if _has_16_bit_colour(opened):
                    orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
                    pixels = _read_16_bit_colour(path, opened.mode, orientation)
                    return LoadedImage(pixels, metadata, 1)
                frames = getattr(opened, "n_frames", 1)  # counting seeks: before the pixels load
                opened.load()
                ImageOps.exif_transpose(opened, in_place=True)
                image = opened
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


MAX_FOLDER_PHOTOS = 1000
"""Photos read from one folder of exemplars, at most (about a second each on a CPU)."""


def photos_in(folder: Path, skipped: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, pixels) of each photo in the folder (PNG, JPEG, WebP, TIFF), by name, one at a
    time; a file that is no readable image is skipped, and its name and why added to
    `skipped`. InvalidImage when the folder has no photo to read."""
    if not folder.is_dir():
        raise InvalidImage(f"{folder} is not a folder: give a folder of photos.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FORMATS and p.is_file())
    if not paths:
        raise InvalidImage(f"{folder} holds no photos: put PNG, JPEG, WebP or TIFF files in it.")
    if len(paths) > MAX_FOLDER_PHOTOS:
        raise InvalidImage(f"{folder} holds {len(paths)} photos; the limit is "
                           f"{MAX_FOLDER_PHOTOS}: choose a smaller folder.")  # fmt: skip
    for path in paths:
        try:
            pixels = read_image(path)
        except InvalidImage as err:
            skipped.append(str(err))
            continue
        yield path.name, pixels
    if len(skipped) == len(paths):
        raise InvalidImage(f"None of the files in {folder} could be read: {skipped[0]}")


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


def _has_16_bit_colour(image: Image.Image) -> bool:
    """Whether a PNG or TIFF has 16-bit colour (or gray and alpha), which Pillow reads only the
    high bytes of."""
    if image.mode not in ("RGB", "RGBA", "LA"):
        return False
    if image.format == "PNG":
        return _png_bit_depth(image) == 16
    if image.format == "TIFF":
        return max(image.tag_v2.get(258, (8,)), default=8) > 8
    return False


def _read_16_bit_colour(path: Path, mode: str, orientation: int) -> np.ndarray:
    """All 16 bits of colour, read by OpenCV, as RGB(A) or gray and alpha (`mode` as Pillow
    saw the file), upright."""
    import cv2

    # (from the bytes: OpenCV cannot open every path Windows can)
    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise InvalidImage(f"{path} is damaged or truncated (its 16-bit pixels cannot be "
                           "read): re-export it.")  # fmt: skip
    order = {"LA": [0, 3], "RGB": [2, 1, 0], "RGBA": [2, 1, 0, 3]}[mode]  # from BGR(A)
    return np.ascontiguousarray(_upright(pixels[:, :, order], orientation))


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels turned as the EXIF orientation says (as ImageOps.exif_transpose turns them)."""
    transposed = pixels.transpose(1, 0, 2)
    return {
        2: pixels[:, ::-1],
        3: np.rot90(pixels, 2),
        4: pixels[::-1],
        5: transposed,
        6: np.rot90(pixels, -1),
        7: np.rot90(transposed, 2),
        8: np.rot90(pixels, 1),
    }.get(orientation, pixels)


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
    if pixels.dtype == np.uint16 and pixels.shape[2] > 1:
        with written_whole(path) as partial:
            partial.write_bytes(_encode_16_bit_colour(pixels, image_format, text, metadata))
        return
    image = Image.fromarray(pixels if pixels.shape[2] > 1 else pixels[:, :, 0])
    with written_whole(path) as partial, partial.open("r+b") as out:
        options: dict = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
        options.update(metadata or {})
        if text and image_format == "PNG":
            options["pnginfo"] = PngImagePlugin.PngInfo()
            for key, value in text.items():
                options["pnginfo"].add_text(key, value)
        image.save(out, format=image_format, **options)


def _encode_16_bit_colour(
    pixels: np.ndarray, image_format: str, text: dict | None, metadata: dict | None
) -> bytes:
    """A 16-bit colour PNG or TIFF, which Pillow cannot write, encoded by OpenCV; a PNG keeps
    the colour profile, resolution and text, in chunks of its own."""
    import cv2

    if pixels.shape[2] == 2:  # gray and alpha: OpenCV writes it as RGBA
        pixels = pixels[:, :, [0, 0, 0, 1]]
    bgr = np.ascontiguousarray(pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]])
    ok, encoded = cv2.imencode(".png" if image_format == "PNG" else ".tif", bgr)
    if not ok:
        raise InvalidImage(f"OpenCV could not encode 16-bit colour as {image_format}.")
    if image_format != "PNG":
        return encoded.tobytes()
    metadata, chunks = metadata or {}, []
    if metadata.get("icc_profile"):
        chunks.append(
            _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(metadata["icc_profile"]))
        )
    if metadata.get("dpi"):
        per_metre = [round(float(dpi) / 0.0254) for dpi in metadata["dpi"]]
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", *per_metre, 1)))
    for key, value in (text or {}).items():  # iTXt: UTF-8, uncompressed
        chunks.append(_png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode()))
    after_header = 8 + 25  # the signature, then IHDR: length, type, 13 bytes, CRC
    png = encoded.tobytes()
    return png[:after_header] + b"".join(chunks) + png[after_header:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


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
