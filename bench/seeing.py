"""What the network sees in a photo, measured: one table per capability, in one process.

1. Strongest channels: seconds to name them on a phone-sized photo (4032x3024, the cat scaled
   up), median of --repeats; and for each photo, how much a dream of its strongest channel
   alone raises that channel, against a dream of its whole layer.
2. Accentuation against a plain DeepDream of the same channel: for each of the project's photos
   and the block7 channel it excites most, the channel's gain (its mean activation on the result
   over that on the photo) and the SSIM of luminance to the photo; the dream runs step by step
   until it reaches the accentuation's gain, so both are compared at the same activation.
3. MACO against the Fourier basis at 512 px on deep layers: MACO runs --steps; the Fourier
   basis runs until it reaches MACO's activation (checked at 16, 32, 64, ... steps); printed,
   each one's activation and high-frequency share (the part of the luminance's spectral power
   above half the Nyquist frequency: static).
4. Exemplars: seconds per photo to find the patches that excite 8 channels most.

Run: .venv/bin/python bench/seeing.py [--repeats 3] [--steps 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dream_server import SAMPLES
from dream_server.engine import Engine
from dream_server.imaging import luminance_ssim
from dream_server.params import ChannelsParams, DreamParams, VisualizeParams

PHOTOS = [SAMPLES / "chelsea.png", SAMPLES / "coffee.png",
          Path(__file__).resolve().parent.parent / "tests" / "photos" / "rocket.jpg"]  # fmt: skip


def rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    return np.array(image.resize(size, Image.BICUBIC) if size else image)


def seconds(work, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def high_frequency_share(image: np.ndarray) -> float:
    luma = torch.from_numpy(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    power = torch.fft.rfft2(luma - luma.mean()).abs().square()
    fy = torch.fft.fftfreq(luma.shape[0])[:, None]
    fx = torch.fft.rfftfreq(luma.shape[1])[None, :]
    high = torch.sqrt(fx * fx + fy * fy) > 0.25
    return float(power[high].sum() / power.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    engine = Engine("cpu")
    engine.model("effnet-lite0")

    phone = rgb(PHOTOS[0], (4032, 3024))
    params = ChannelsParams.from_mapping({"layer": "block7", "top": 8})
    took = seconds(lambda: engine.strongest_channels(phone, params), args.repeats)
    print(f"1. strongest channels of block7 on a 4032x3024 photo: {took:.2f} s (median)")
    for path in PHOTOS:
        photo = rgb(path)
        top = engine.strongest_channels(photo, ChannelsParams.from_mapping({"top": 1}))[0]
        unit = VisualizeParams.from_mapping({"layer": "block7", "channel": top.channel})
        before = engine.unit_activation(unit, photo)
        gains = []
        for layers in (top.label, "block7"):
            settings = DreamParams.from_mapping({"layers": layers, "steps": 4, "octaves": 3})
            dreamed = engine.dream(photo, settings)
            gains.append(engine.unit_activation(unit, dreamed) / before)
        print(
            f"   {path.name}: its strongest, {top.label} ({top.share:.1%}), rises "
            f"{gains[0]:.2f}x dreamed alone, {gains[1]:.2f}x in its layer (3 octaves x 4 steps)"
        )

    print("\n2. accentuation (leash 10, 128 steps) against DeepDream of the same channel")
    print(f"{'photo':12} {'channel':10} {'gain':>5} {'SSIM':>5} {'s':>5} | {'dream steps':>11} "
          f"{'gain':>5} {'SSIM':>5}")  # fmt: skip
    for path in PHOTOS:
        photo = rgb(path)
        top = engine.strongest_channels(photo, ChannelsParams.from_mapping({"top": 1}))[0]
        unit = VisualizeParams.from_mapping({"layer": "block7", "channel": top.channel,
                                             "samples": 1, "steps": 128})  # fmt: skip
        before = engine.unit_activation(unit, photo)
        start = time.perf_counter()
        accentuated = engine.visualize(unit, photo=photo)[0]
        took = time.perf_counter() - start
        gain = engine.unit_activation(unit, accentuated) / before
        for steps in range(1, 60):
            dreamed = engine.dream(photo, DreamParams.from_mapping({"layers": top.label,
                                                                    "steps": steps}))  # fmt: skip
            dream_gain = engine.unit_activation(unit, dreamed) / before
            if dream_gain >= gain:
                break
        kept, dream_kept = (luminance_ssim(x, photo) for x in (accentuated, dreamed))
        print(f"{path.name:12} {top.label:10} {gain:5.2f} {kept:5.2f} {took:5.1f} | {steps:>11} "
              f"{dream_gain:5.2f} {dream_kept:5.2f}")  # fmt: skip

    print(f"\n3. MACO ({args.steps} steps) against the Fourier basis at 512 px, same activation")
    print(f"{'unit':12} {'MACO act':>9} {'HF share':>9} {'s':>5} | {'fft steps':>9} {'act':>7} "
          f"{'HF share':>9}")  # fmt: skip
    for layer, channel in (("block9", 3), ("block13", 7), ("head", 11)):
        values = {"layer": layer, "channel": channel, "samples": 1, "size": 512}
        maco = VisualizeParams.from_mapping({**values, "param": "maco", "steps": args.steps})
        start = time.perf_counter()
        image = engine.visualize(maco)[0]
        took = time.perf_counter() - start
        reached = engine.unit_activation(maco, image)
        steps = 16
        while True:
            fft = VisualizeParams.from_mapping({**values, "param": "fft", "steps": steps})
            other = engine.visualize(fft)[0]
            activation = engine.unit_activation(fft, other)
            if activation >= reached or steps >= 8 * args.steps:
                break
            steps *= 2
        print(f"{layer}/{channel:<5} {reached:9.2f} {high_frequency_share(image):9.4f} {took:5.0f} "
              f"| {steps:>9} {activation:7.2f} {high_frequency_share(other):9.4f}")  # fmt: skip

    photos = [(path.name, rgb(path)) for path in PHOTOS]
    params = VisualizeParams.from_mapping({"layer": "block7", "size": 128})
    channels = list(range(8))
    took = seconds(lambda: engine.exemplars(params, channels, photos), args.repeats)
    print(f"\n4. exemplars of 8 block7 channels in {len(photos)} photos: "
          f"{took / len(photos):.2f} s per photo (median)")  # fmt: skip


if __name__ == "__main__":
    main()
