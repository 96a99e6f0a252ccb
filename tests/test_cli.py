"""The `deepdream` command: files in, files out, and a clear line for every mistake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, photo
from PIL import Image

from dream_server.models import MODELS

QUICK = ["--octaves", "2", "--steps", "3", "--preset", "textures"]


def deepdream(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dream_server.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


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
    "        if name.split('.')[0] in ('torch', 'torchvision', 'numpy', 'PIL'):\n"
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


def write_zero_width_png(path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


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
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_that_says_what_to_do_and_leaves_nothing(case, cat_png):
    folder = cat_png.parent
    (folder / "notes.png").write_text("shopping list")
    (folder / "truncated.png").write_bytes(cat_png.read_bytes()[:5000])
    write_zero_width_png(folder / "empty.png")
    Image.new("RGBA", (10, 10), (1, 2, 3, 4)).save(folder / "alpha.png")
    before = set(folder.iterdir())
    make_args, expected = BAD_INPUTS[case]
    run = deepdream(*make_args(folder, cat_png))
    assert run.returncode == 2
    message = run.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert any(part in message for part in expected.split("|")), message
    assert message.startswith("deepdream: ")
    assert set(folder.iterdir()) == before  # no output, no temporary file


def test_an_interrupted_run_leaves_no_file(tmp_path):
    source, out = tmp_path / "coffee.png", tmp_path / "dream.png"
    Image.fromarray(photo("coffee.png")).save(source)
    process = subprocess.Popen(
        [sys.executable, "-m", "dream_server.cli", str(source), "-o", str(out), "--steps", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    os.set_blocking(process.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 120
    while b"dreaming" not in seen and time.monotonic() < deadline:
        seen += process.stderr.read() or b""
        time.sleep(0.05)
    assert b"dreaming" in seen
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee.png"]


def test_a_failed_run_leaves_an_existing_output_untouched(cat_png, tmp_path):
    out = tmp_path / "dream.png"
    out.write_bytes(b"the user's earlier dream")
    assert deepdream(cat_png, "-o", out, "--layers", "nosuch").returncode == 2
    assert out.read_bytes() == b"the user's earlier dream"
