"""The `deepdream` command: files in, files out, and a clear line for every mistake."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, deepdream, on_a_terminal, photo
from PIL import Image

from dream_server.cli import SUBCOMMANDS
from dream_server.models import MODELS

QUICK = ["--octaves", "2", "--steps", "3", "--preset", "textures"]


@pytest.fixture()
def cat_png(tmp_path) -> Path:
    path = tmp_path / "cat.png"
    Image.fromarray(photo("chelsea.png", (192, 128))).save(path)
    return path


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "deepdream"
    run = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--octave-scale" in run.stdout


def test_dreams_a_photo_into_a_new_file_with_a_progress_bar(cat_png, tmp_path):
    out = tmp_path / "dream.png"
    run = deepdream(cat_png, "-o", out, *QUICK)
    assert run.returncode == 0, run.stderr
    assert f"Wrote {out}" in run.stdout
    assert out.stat().st_mode & 0o644 == 0o644  # readable like any file the user writes
    assert "dreaming" in run.stderr and "100%" in run.stderr
    dreamed, original = np.array(Image.open(out)), np.array(Image.open(cat_png))
    assert dreamed.shape == original.shape
    assert np.abs(dreamed.astype(int) - original).mean() > 3


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".tif"])
def test_writes_jpeg_webp_and_tiff(cat_png, tmp_path, suffix):
    out = tmp_path / f"dream{suffix}"
    assert deepdream(cat_png, "-o", out, *QUICK, "-q").returncode == 0
    assert Image.open(out).size == (192, 128)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_keeps_alpha_exactly(tmp_path, suffix):
    rgba = np.dstack(
        [photo("chelsea.png", (192, 128)), np.tile(np.arange(192, dtype=np.uint8), (128, 1))]
    )
    source, out = tmp_path / "cat.png", tmp_path / f"dream{suffix}"
    Image.fromarray(rgba).save(source)
    assert deepdream(source, "-o", out, *QUICK, "-q").returncode == 0
    dreamed = np.array(Image.open(out))
    assert dreamed.shape == rgba.shape and np.array_equal(dreamed[:, :, 3], rgba[:, :, 3])


def test_16_bit_gray_stays_16_bit(tmp_path):
    gray16 = (photo("chelsea.png", (192, 128), "L")[:, :, 0].astype(np.uint16) * 257) + 3
    source, out = tmp_path / "gray16.png", tmp_path / "dream16.png"
    Image.fromarray(gray16).save(source)
    assert deepdream(source, "-o", out, *QUICK, "-q").returncode == 0
    dreamed = np.array(Image.open(out))
    assert dreamed.dtype == np.uint16 and dreamed.shape == gray16.shape
    assert np.any(dreamed % 257 != 3)  # values between 8-bit levels survive


@pytest.mark.parametrize("name", ["rgba16.png", "rgb16.tif"])
def test_16_bit_colour_is_read_and_written_at_16_bits(tmp_path, name):
    source, out = tmp_path / name, tmp_path / f"dream{Path(name).suffix}"
    if name.endswith(".png"):
        write_16_bit_rgba_png(source)
    else:
        rgb = photo("chelsea.png", (96, 64)).astype(np.uint16) * 257 + 3
        cv2.imwrite(str(source), np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV's BGR
    original = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    run = deepdream(source, "-o", out, *QUICK, "-q")
    assert run.returncode == 0, run.stderr
    dreamed = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert dreamed.dtype == np.uint16 and dreamed.shape == original.shape
    assert np.any(dreamed[:, :, :3] % 257 != 0)  # values between 8-bit levels
    assert not np.array_equal(dreamed[:, :, :3], original[:, :, :3])  # and dreamed
    if original.shape[2] == 4:
        assert np.array_equal(dreamed[:, :, 3], original[:, :, 3])  # alpha 1394 of 65535, kept


def test_a_mask_file_keeps_the_black_part(cat_png, tmp_path):
    mask = np.zeros((128, 192), np.uint8)
    mask[:, 96:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "dream.png"
    assert (
        deepdream(cat_png, "-o", out, *QUICK, "--mask", tmp_path / "mask.png", "-q").returncode == 0
    )
    dreamed, original = np.array(Image.open(out)), np.array(Image.open(cat_png))
    assert np.array_equal(dreamed[:, :96], original[:, :96])
    assert not np.array_equal(dreamed[:, 96:], original[:, 96:])


def test_a_guide_image_steers_the_dream(cat_png, tmp_path):
    guide = tmp_path / "guide.png"
    Image.fromarray(photo("coffee.png", (150, 100))).save(guide)
    guided, plain = tmp_path / "guided.png", tmp_path / "plain.png"
    assert deepdream(cat_png, "-o", guided, *QUICK, "--guide", guide, "-q").returncode == 0
    assert deepdream(cat_png, "-o", plain, *QUICK, "-q").returncode == 0
    assert not np.array_equal(np.array(Image.open(guided)), np.array(Image.open(plain)))


NO_TORCH = (
    "import runpy, sys\n"
    "class Block:\n"
    "    def find_spec(self, name, *args):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision', 'numpy', 'PIL', 'cv2', 'av'):\n"
    "            raise ImportError(f'{name} was imported')\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = ['deepdream', *sys.argv[1:]]\n"
    "runpy.run_module('dream_server.cli', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--help"], 0, "--octave-scale"),
        (["--version"], 0, "deepdream 0."),
        (["--list-models"], 0, "effnet-lite0"),
        (["--list-layers", "googlenet"], 0, "inception4c"),
        (["in.png", "-o", "out.png", "--steps", "0"], 2, "'steps' must be a whole number"),
        (["in.png"], 2, "give an input image and -o OUTPUT"),
        (["visualize", "--help"], 0, "--diversity"),
        (["zoom", "--help"], 0, "--steps-per-frame"),
        (["video", "--help"], 0, "--no-flow"),
        (["video", "in.mp4", "-o", "out.mp4", "--blend", "2"], 2, "'blend' must be a number"),
    ],
)
def test_quick_answers_come_without_loading_torch(args, code, expected):
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == code, run.stderr
    assert expected in run.stdout + run.stderr


def test_a_dream_shows_its_progress_bar_before_the_model_has_loaded(cat_png, tmp_path):
    # Loading torch and the model takes seconds: the bar says so from the start.
    run = deepdream(cat_png, "-o", tmp_path / "dream.png", "--octaves", "1", "--steps", "1")
    assert run.returncode == 0, run.stderr
    assert run.stderr.index("loading effnet-lite0") < run.stderr.index("dreaming")


def test_lists_models_and_layers():
    models = deepdream("--list-models")
    assert models.returncode == 0
    for name in MODELS:
        assert name in models.stdout
    assert "download.pytorch.org/models/vgg16-397923af.pth" in models.stdout
    layers = deepdream("--list-layers", "effnet-lite0")
    assert layers.returncode == 0
    assert "block10" in layers.stdout and "animals" in layers.stdout and "eyes" in layers.stdout


def write_png(
    path: Path, width: int, height: int, bit_depth: int, colour_type: int, rows: bytes = b""
) -> None:
    """A PNG written by hand: sizes, depths and contents that Pillow would never write."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(rows)) if rows else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b""))


def write_16_bit_rgba_png(path: Path) -> None:
    width, height = 96, 64
    rgba = np.zeros((height, width, 4), ">u2")
    rgba[..., :3] = photo("chelsea.png", (width, height)).astype(np.uint16) * 257
    rgba[..., 3] = 1394  # an alpha that 8 bits cannot hold
    rows = b"".join(b"\0" + row.tobytes() for row in rgba)  # filter 0 before each row
    write_png(path, width, height, 16, 6, rows)


def out(folder: Path) -> Path:
    return folder / "out.png"


BAD_INPUTS = {  # case: (arguments, given the folder and the cat photo; what the message says)
    "missing input": (lambda d, cat: [d / "nope.png", "-o", out(d)], "does not exist"),
    "not an image": (lambda d, cat: [d / "notes.png", "-o", out(d)], "not an image"),
    "truncated image": (lambda d, cat: [d / "truncated.png", "-o", out(d)], "damaged"),
    "zero-size image": (lambda d, cat: [d / "empty.png", "-o", out(d)], "damaged|empty"),
    "absurd steps": (lambda d, cat: [cat, "-o", out(d), "--steps", "100000"], "from 1 to 500"),
    "absurd octave scale": (
        lambda d, cat: [cat, "-o", out(d), "--octave-scale", "0"],
        "from 1.05 to 3",
    ),
    "not a number": (lambda d, cat: [cat, "-o", out(d), "--strength", "lots"], "expected a number"),
    "unknown model": (
        lambda d, cat: [cat, "-o", out(d), "--model", "alexnet"],
        "invalid choice: 'alexnet'",
    ),
    "unknown layer": (
        lambda d, cat: [cat, "-o", out(d), "--layers", "mixed4c"],
        "has no layer 'mixed4c'",
    ),
    "channel out of range": (
        lambda d, cat: [cat, "-o", out(d), "--layers", "block10/5000"],
        "channels 0 to 111",
    ),
    "unknown class": (
        lambda d, cat: [cat, "-o", out(d), "--layers", "class/unicorn"],
        "not an ImageNet class",
    ),
    "preset and layers": (
        lambda d, cat: [cat, "-o", out(d), "--preset", "parts", "--layers", "block3"],
        "not allowed with",
    ),
    "alpha into JPEG": (
        lambda d, cat: [d / "alpha.png", "-o", d / "out.jpg"],
        "cannot store transparency",
    ),
    "unknown format": (lambda d, cat: [cat, "-o", d / "out.bmp"], "name the output .png"),
    "missing folder": (lambda d, cat: [cat, "-o", d / "no" / "out.png"], "does not exist"),
    "mask of another size": (
        lambda d, cat: [cat, "-o", out(d), "--mask", d / "alpha.png"],
        "mask is 10x10",
    ),
    "no output": (lambda d, cat: [cat], "-o OUTPUT"),
    "output is the input": (lambda d, cat: [cat, "-o", cat], "is the input image itself"),
    "output is the input spelled otherwise": (
        lambda d, cat: [cat, "-o", d / ".." / d.name / "." / cat.name],
        "is the input image itself",
    ),
    "output is a link to the input": (
        lambda d, cat: [cat, "-o", d / "link.png"],
        "is the input image itself",
    ),
    "output is the mask": (
        lambda d, cat: [cat, "-o", d / "gray.png", "--mask", d / "gray.png"],
        "is the mask image itself",
    ),
    "a weight that is not a number": (
        lambda d, cat: [cat, "-o", out(d), "--layers", "block10:nan"],
        "must be a number",
    ),
    "an infinite weight": (
        lambda d, cat: [cat, "-o", out(d), "--layers", "block3:1,block10:-inf"],
        "must be a number",
    ),
    "a fractional whole number": (
        lambda d, cat: [cat, "-o", out(d), "--steps", "2.5"],
        "'steps' must be a whole number",
    ),
    "a negative seed": (
        lambda d, cat: [cat, "-o", out(d), "--seed", "-1"],
        "from 0 to 2147483647",
    ),
    "16-bit colour into JPEG": (
        lambda d, cat: [d / "rgba16.png", "-o", d / "out.jpg"],
        "cannot store transparency|cannot store 16-bit images",
    ),
    "decompression bomb": (lambda d, cat: [d / "bomb.png", "-o", out(d)], "megapixels"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_that_says_what_to_do_and_leaves_nothing(case, cat_png):
    folder = cat_png.parent
    (folder / "notes.png").write_text("shopping list")
    (folder / "truncated.png").write_bytes(cat_png.read_bytes()[:5000])
    write_png(folder / "empty.png", 0, 10, 8, 2)
    write_png(folder / "bomb.png", 25_000, 25_000, 1, 0)  # 625 megapixels declared, none sent
    write_16_bit_rgba_png(folder / "rgba16.png")
    Image.new("RGBA", (10, 10), (1, 2, 3, 4)).save(folder / "alpha.png")
    Image.new("L", (192, 128), 255).save(folder / "gray.png")
    (folder / "link.png").symlink_to(cat_png)
    before = {path: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    make_args, expected = BAD_INPUTS[case]
    run = deepdream(*make_args(folder, cat_png))
    assert run.returncode == 2
    message = on_a_terminal(run.stderr)
    assert "\n" not in message and "Traceback" not in message, message
    assert any(part in message for part in expected.split("|")), message
    assert message.startswith("deepdream: ")
    after = {path: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert after == before  # nothing written, nothing changed, no temporary file


@pytest.mark.parametrize("when", ["while loading", "while dreaming"])
def test_an_interrupted_run_says_so_in_one_line_and_leaves_no_file(tmp_path, when):
    source, out = tmp_path / "coffee.png", tmp_path / "dream.png"
    Image.fromarray(photo("coffee.png")).save(source)
    process = subprocess.Popen(
        [sys.executable, "-m", "dream_server.cli", str(source), "-o", str(out), "--steps", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    os.set_blocking(process.stderr.fileno(), False)
    awaited = b"loading" if when == "while loading" else b"dreaming"
    seen, deadline = b"", time.monotonic() + 120
    while awaited not in seen and time.monotonic() < deadline:
        seen += process.stderr.read() or b""
        time.sleep(0.01)
    assert awaited in seen
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    os.set_blocking(process.stderr.fileno(), True)
    said = on_a_terminal((seen + process.stderr.read()).decode())
    assert said.splitlines()[-1] == "deepdream: interrupted; nothing was written."
    assert "Traceback" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee.png"]


def test_a_failed_run_leaves_an_existing_output_untouched(cat_png, tmp_path):
    out = tmp_path / "dream.png"
    out.write_bytes(b"the user's earlier dream")
    assert deepdream(cat_png, "-o", out, "--layers", "nosuch").returncode == 2
    assert out.read_bytes() == b"the user's earlier dream"


def test_a_phone_photo_comes_out_upright_with_its_colour_profile_and_resolution(tmp_path):
    from PIL import ImageCms

    # Phones store the sensor's pixels and an EXIF tag saying how to turn them (6: a quarter
    # turn clockwise); every viewer shows the photo turned.
    sideways = Image.fromarray(photo("chelsea.png", (192, 128)))
    exif = Image.Exif()
    exif[0x0112] = 6
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "phone.jpg"
    sideways.save(source, exif=exif, icc_profile=profile, dpi=(300, 300), quality=95)
    for suffix in (".png", ".jpg", ".tif"):
        out = tmp_path / f"dream{suffix}"
        assert deepdream(source, "-o", out, *QUICK, "-q").returncode == 0
        with Image.open(out) as dreamed:
            assert dreamed.size == (128, 192)  # upright, as the viewer showed it
            assert dreamed.info.get("icc_profile") == profile
            assert tuple(round(v) for v in dreamed.info["dpi"]) == (300, 300)


def test_an_animated_image_says_that_only_its_first_frame_is_dreamed(tmp_path):
    frames = [Image.fromarray(photo("chelsea.png", (96, 64))).rotate(angle) for angle in (0, 5, 10)]
    source = tmp_path / "cat.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=100)
    run = deepdream(source, "-o", tmp_path / "dream.png", *QUICK, "-q")
    assert run.returncode == 0, run.stderr
    assert "is animated (3 frames): only its first frame is dreamed" in run.stderr


def test_a_channel_of_logits_is_a_class(cat_png, tmp_path):
    out = tmp_path / "fox.png"
    run = deepdream(cat_png, "-o", out, "--layers", "logits/277", "--octaves", "1", "-q")
    assert run.returncode == 0, run.stderr  # 277 is "red fox"
    sheet = tmp_path / "sheet.png"
    visualize = ["--layer", "logits", "--channel", "277", "--steps", "4", "--size", "64", "-n", "1"]
    run = deepdream("visualize", *visualize, "-o", sheet, "-q")
    assert run.returncode == 0, run.stderr


def test_a_neuron_off_the_layers_grid_is_refused(tmp_path):
    run = deepdream(
        "visualize", "--layer", "block9", "--neuron", "0,99999,-5", "--size", "64", "-o",
        tmp_path / "sheet.png",
    )  # fmt: skip
    assert run.returncode == 2
    assert "grid of 4x4 positions for images of 64x64 px" in run.stderr
    assert not (tmp_path / "sheet.png").exists()


def test_whole_numbers_may_be_written_in_exponent_form(cat_png, tmp_path):
    run = deepdream(cat_png, "-o", tmp_path / "d.png", "--tile-size", "1e3", *QUICK, "-q")
    assert run.returncode == 0, run.stderr


def test_a_full_disk_is_the_users_to_fix_and_said_so_in_one_line(
    cat_png, tmp_path, monkeypatch, capsys
):
    from dream_server import cli

    def disk_full(*args, **kwargs):  # what Pillow's save meets on a full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "dream.png"))

    monkeypatch.setattr(Image.Image, "save", disk_full)
    code = cli.main([str(cat_png), "-o", str(tmp_path / "dream.png"), *QUICK, "-q"])
    said = capsys.readouterr().err.strip()
    assert code == 2
    assert said.startswith("deepdream: No space left on device") and "free some space" in said
    assert "internal error" not in said and "\n" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]


@pytest.mark.parametrize("command", [[], *([name] for name in SUBCOMMANDS)])
def test_every_commands_help_reads_as_written(command):
    run = deepdream(*command, "--help")
    assert run.returncode == 0, run.stderr
    assert "option_strings" not in run.stdout  # a stray % in a help text makes argparse say that
    if command == ["zoom"]:
        assert "1.05 is 5% a frame" in " ".join(run.stdout.split())
