"""The engine against a faithful port of the classic DeepDream, in one process, same photo.

Settings: 1024x768, 4 octaves x 1.4, 10 steps, one deep layer (block10) of effnet-lite0, CPU,
2 threads. Prints seconds (median of --repeats), the activation gain each reached (the layer's
mean squared activation on the result over that on the photo, measured identically for both:
whole image, fp32), the speed ratio, and how the engine's time splits between the network's own
forward and backward passes and everything else (resizing, jitter, smoothing, tiling, blending).

Run: .venv/bin/python bench/dream_speed.py [--repeats 5] [--photo FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dream_server.devices import keep_cpu_memory_mapped
from dream_server.dream import dream
from dream_server.models import FeatureModel, model_spec
from dream_server.models.efficientnet_lite import EfficientNetLite0
from dream_server.models.zoo import _effnet_weights_path, load_model
from dream_server.objectives import layer
from dream_server.params import DreamParams

LAYER = "block10"
SAMPLE = Path(__file__).resolve().parent.parent / "dream_server" / "samples" / "coffee.png"


def classic_model() -> FeatureModel:
    """EfficientNet-Lite0 as a line-by-line port has it: batch norm separate, weights trainable
    (Caffe's `net.backward` computes the weight gradients as well; the engine freezes them)."""
    net = EfficientNetLite0()
    net.load_state_dict(torch.load(_effnet_weights_path(), weights_only=True))
    spec = model_spec("effnet-lite0")
    model = FeatureModel("effnet-lite0", net.named_stages(), spec.normalize, spec.min_input_size)
    return model.requires_grad_(True)


def classic_deepdream(model: FeatureModel, photo: np.ndarray, seed: int = 0) -> np.ndarray:
    """Google's dream.ipynb (`deepdream` + `make_step`), line for line in PyTorch, on 0..255:
    whole image, forward truncated at the layer, fp32, `dst.diff = dst.data` (L2) objective.

    The jitter is drawn as the engine draws it, so that for one seed both take the same path:
    their difference in gain then varies by about 0.05 from seed to seed, where the gain itself
    varies by 0.2.
    """
    generator = torch.Generator().manual_seed(seed)
    base = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float()
    octaves = [base]
    for _ in range(3):
        h, w = octaves[-1].shape[-2:]
        smaller = (round(h / 1.4), round(w / 1.4))
        octaves.append(F.interpolate(octaves[-1], size=smaller, mode="bilinear"))
    detail = torch.zeros_like(octaves[-1])
    for octave_base in reversed(octaves):
        detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="bilinear")
        src = octave_base + detail
        for _ in range(10):
            oy, ox = (int(torch.randint(-32, 33, (1,), generator=generator)) for _ in "yx")
            src = torch.roll(src, (int(oy), int(ox)), (2, 3)).requires_grad_(True)
            activation = model(src / 255.0, [LAYER])[LAYER]
            (0.5 * activation.square().sum()).backward()
            g = src.grad
            src = src.detach() + 1.5 / g.abs().mean() * g
            src = torch.roll(src, (-int(oy), -int(ox)), (2, 3)).clamp(0, 255)
            model.zero_grad(set_to_none=True)
        detail = src - octave_base
    return src[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def activation_l2(model: FeatureModel, image: np.ndarray) -> float:
    x = torch.from_numpy(image[:, :, :3].copy()).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        return float(model(x, [LAYER])[LAYER].square().mean())


class NetworkTimer:
    """Adds up the time spent in the network's forward passes and in the backward passes."""

    def __init__(self, model: FeatureModel) -> None:
        self.seconds = 0.0
        model.register_forward_pre_hook(lambda *_: self._start())
        model.register_forward_hook(lambda *_: self._stop())
        self._grad = torch.autograd.grad

    def _start(self) -> None:
        self._t0 = time.perf_counter()

    def _stop(self) -> None:
        self.seconds += time.perf_counter() - self._t0

    def __enter__(self) -> NetworkTimer:
        def timed_grad(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self._start()
            try:
                return self._grad(*args, **kwargs)
            finally:
                self._stop()

        torch.autograd.grad = timed_grad
        return self

    def __exit__(self, *exc: object) -> None:
        torch.autograd.grad = self._grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photo", type=Path, default=SAMPLE)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_cpu_memory_mapped()  # process-wide: the classic port runs with it too
    photo = np.asarray(Image.open(args.photo).convert("RGB").resize((1024, 768), Image.BICUBIC))
    reference = classic_model()
    engine_model = load_model("effnet-lite0")
    settings = DreamParams(octaves=4, octave_scale=1.4, steps=10, step_size=1.5, jitter=32)
    before = activation_l2(reference, photo)

    classic_times, engine_times, network_times = [], [], []
    classic_gains, engine_gains = [], []
    for seed in range(args.repeats):  # the gain depends on the jitter: a seed per repeat
        t0 = time.perf_counter()
        classic = classic_deepdream(reference, photo, seed)
        classic_times.append(time.perf_counter() - t0)
        with NetworkTimer(engine_model) as timer:
            t0 = time.perf_counter()
            ours = dream(engine_model, photo, layer(LAYER), replace(settings, seed=seed))
            engine_times.append(time.perf_counter() - t0)
        network_times.append(timer.seconds)
        classic_gains.append(activation_l2(reference, classic) / before)
        engine_gains.append(activation_l2(reference, ours) / before)

    classic_s, engine_s = statistics.median(classic_times), statistics.median(engine_times)
    network_s = statistics.median(network_times)
    print(
        f"photo {args.photo.name} at 1024x768, {LAYER}, 4 octaves x 1.4, 10 steps, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'':22}{'seconds':>10}{'gain':>10}")
    classic_gain, engine_gain = statistics.median(classic_gains), statistics.median(engine_gains)
    print(f"{'classic port (fp32)':22}{classic_s:10.2f}{classic_gain:10.2f}")
    print(f"{'engine':22}{engine_s:10.2f}{engine_gain:10.2f}")
    differences = [
        ours - classic for ours, classic in zip(engine_gains, classic_gains, strict=True)
    ]
    spread = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0
    print(
        f"gain, engine minus classic port, same seed: {statistics.mean(differences):+.3f} "
        f"(standard error {spread:.3f})"
    )
    print(f"speed-up: {classic_s / engine_s:.2f}x")
    print(
        f"engine time in the network's forward+backward: {network_s:.2f} s; everything else "
        f"{engine_s - network_s:.2f} s = {100 * (engine_s - network_s) / network_s:.0f}% on top"
    )
    big = subprocess.run(  # a fresh process, so that its peak memory is the big dream's own
        [
            sys.executable,
            str(Path(__file__).with_name("big_dream.py")),
            "--octaves",
            "1",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(big.stdout.strip().splitlines()[-1])
    print(
        f"6000x4000, 1 octave x 2 steps, tiles of 512: {report['seconds']:.1f} s, "
        f"peak memory {report['peak_mb']} MB"
    )


if __name__ == "__main__":
    main()
