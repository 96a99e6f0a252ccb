"""Feature visualization: from noise to pictures of what a unit of the network looks for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import deepdream, on_a_terminal
from PIL import Image

from dream_server.errors import InvalidParameter
from dream_server.params import VisualizeParams
from dream_server.visualize import (
    FourierImage,
    full_objective,
    render,
    target,
)

CHANNEL = {"layer": "block7", "channel": 5, "size": 128, "samples": 2}


def params(**values) -> VisualizeParams:
    return VisualizeParams.from_mapping(values)


def score(model, objective, images: np.ndarray) -> float:
    x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
    with torch.no_grad():
        return float(objective(model(x, objective.layers))) / len(images)


def laplacian_energy(images: np.ndarray) -> float:
    """High-frequency energy: the mean square of the 4-neighbour Laplacian."""
    x = images.astype(np.float32).mean(axis=3)
    laplacian = (
        4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    )
    return float(np.mean(laplacian**2))


@pytest.fixture(scope="module")
def channel_render(effnet):
    settings = params(**CHANNEL, steps=64)
    return render(effnet, full_objective(settings, effnet), settings)


def test_from_noise_the_objective_rises_substantially(effnet, channel_render):
    settings = params(**CHANNEL, steps=64)
    objective = target(settings, effnet)
    generator = torch.Generator().manual_seed(settings.seed)
    start = FourierImage(2, 128, generator)()
    start_images = (start.detach().permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    before, after = score(effnet, objective, start_images), score(effnet, objective, channel_render)
    assert after > 3 * max(before, 1.0)
    assert np.abs(channel_render.astype(int) - start_images).mean() > 10  # no longer noise


def test_regularisation_removes_most_high_frequency_energy(effnet, channel_render):
    plain = params(**CHANNEL, steps=64, param="pixel", robustness=False, tv=0.0)
    unregularised = render(effnet, full_objective(plain, effnet), plain)
    ratio = laplacian_energy(channel_render) / laplacian_energy(unregularised)
    print(f"Laplacian energy, regularised / unregularised: {ratio:.2f}")
    assert ratio < 0.5


def test_diversity_makes_the_samples_differ_while_each_still_fires(effnet):
    def gram_similarity(images: np.ndarray) -> float:
        x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
        with torch.no_grad():
            features = effnet(x, ["block7"])["block7"].flatten(2)
        grams = torch.nn.functional.normalize(
            (features @ features.transpose(1, 2)).flatten(1), dim=1
        )
        similarity = grams @ grams.t()
        n = len(images)
        return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))

    base = {"layer": "block7", "channel": 5, "size": 96, "samples": 4, "steps": 48}
    alike = render(effnet, full_objective(params(**base), effnet), params(**base))
    varied_settings = params(**base, diversity=100.0)
    varied = render(effnet, full_objective(varied_settings, effnet), varied_settings)
    print(f"mean pairwise Gram similarity: {gram_similarity(alike):.3f} without diversity, "
          f"{gram_similarity(varied):.3f} with")  # fmt: skip
    assert gram_similarity(varied) < gram_similarity(alike) - 0.02
    objective = target(params(**base), effnet)
    baseline = score(effnet, objective, alike)
    for image in varied:
        assert score(effnet, objective, image[None]) > 0.3 * baseline


def test_same_seed_same_images_other_seed_other_images(effnet):
    settings = params(layer="block4", channel=3, size=64, samples=2, steps=8)
    again = params(layer="block4", channel=3, size=64, samples=2, steps=8)
    other = params(layer="block4", channel=3, size=64, samples=2, steps=8, seed=3)
    first = render(effnet, full_objective(settings, effnet), settings)
    assert np.array_equal(first, render(effnet, full_objective(again, effnet), again))
    assert not np.array_equal(first, render(effnet, full_objective(other, effnet), other))


def test_neuron_and_class_targets(effnet):
    neuron = params(layer="block9", neuron="3,2,2", size=64, samples=1, steps=16)
    assert target(neuron, effnet).description == "block9/3@2,2"
    goldfish = params(**{"class": "goldfish", "size": 96, "samples": 1, "steps": 24})
    image = render(effnet, full_objective(goldfish, effnet), goldfish)
    assert score(effnet, target(goldfish, effnet), image) > 5


def test_bad_targets_say_what_exists(effnet):
    with pytest.raises(InvalidParameter, match="channels 0 to 79"):
        target(params(layer="block7", channel=80), effnet)
    with pytest.raises(InvalidParameter, match="CHANNEL,X,Y"):
        params(layer="block7", neuron="3,4")
    with pytest.raises(InvalidParameter, match="not both"):
        params(layer="block7", neuron="3,4,5", channel=2)


def test_the_visualize_command_writes_a_labelled_contact_sheet(tmp_path):
    sheet, each = tmp_path / "sheet.png", tmp_path / "each"
    run = deepdream("visualize", "--layer", "block7", "--channel", "5", "-n", "3", "--size", "64",
                    "--steps", "8", "-o", sheet, "--each", each, "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    image = Image.open(sheet)
    assert image.text["deepdream:grid"] == "2x2" and image.text["deepdream:cell"] == "64x64"
    labels = ["block7/5 #1", "block7/5 #2", "block7/5 #3"]
    assert json.loads(image.text["deepdream:labels"]) == labels
    assert image.size == (2 * 68 + 4, 2 * (64 + 18 + 4) + 4)
    label_strip = np.asarray(image.convert("L"))[4 + 64 : 4 + 64 + 18, 4 : 4 + 64]
    assert (label_strip < 128).any()  # the label is drawn, dark on white
    assert sorted(p.name for p in each.iterdir()) == [
        "block7-5--1.png", "block7-5--2.png", "block7-5--3.png"
    ]  # fmt: skip


def test_the_atlas_command_writes_one_labelled_image_per_channel(tmp_path):
    atlas = tmp_path / "atlas.png"
    run = deepdream("atlas", "--layer", "block5", "--channels", "0-3,9", "--size", "64",
                    "--steps", "8", "-o", atlas, "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    image = Image.open(atlas)
    assert json.loads(image.text["deepdream:labels"]) == [f"block5/{c}" for c in (0, 1, 2, 3, 9)]
    assert image.text["deepdream:grid"] == "2x3"


def test_visualize_mistakes_get_one_line(tmp_path):
    for args, expected in (
        (["--layer", "mixed4c"], "has no layer 'mixed4c'"),
        (["--layer", "block7", "--channel", "999"], "channels 0 to 79"),
        (["--class", "unicorn"], "not an ImageNet class"),
        (["--steps", "0"], "from 1 to 4096"),
    ):
        run = deepdream("visualize", *args, "-o", tmp_path / "x.png", "--size", "64")
        assert run.returncode == 2 and expected in run.stderr, run.stderr
        assert "\n" not in on_a_terminal(run.stderr)
    assert list(tmp_path.iterdir()) == []
