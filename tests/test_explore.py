"""What the network sees in the user's own photos: the channels a photo excites, the photo with
one of them turned up (accentuation), the patches of a folder of photos that excite a channel,
and MACO renders that keep the spectrum of real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SAMPLES, deepdream, photo
from PIL import Image

from dream_server.engine import Engine
from dream_server.errors import InvalidParameter
from dream_server.explore import PER_PHOTO, channels_photos_excite, exemplars
from dream_server.imaging import luminance_ssim
from dream_server.params import ChannelsParams, DreamParams, VisualizeParams
from dream_server.visualize import MagnitudeImage, PhotoImage, natural_spectrum, where_changed

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("cpu")


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return photo("chelsea.png")


def channel_mean(engine: Engine, image: np.ndarray, layer: str, channel: int) -> float:
    params = VisualizeParams.from_mapping({"layer": layer, "channel": channel})
    return engine.unit_activation(params, image)


def positive_means(engine: Engine, image: np.ndarray, layer: str) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        return engine.model("effnet-lite0")(x, [layer])[layer][0].clamp(min=0).mean((1, 2))


# -- the strongest channels ----------------------------------------------------------------------


def test_the_strongest_channels_are_those_the_photo_excites_most_with_their_share(engine, cat):
    strongest = engine.strongest_channels(cat, ChannelsParams.from_mapping({"top": 5}))
    means = positive_means(engine, cat, "block7")
    assert [s.channel for s in strongest] == means.argsort(descending=True)[:5].tolist()
    assert [s.label for s in strongest][0] == f"block7/{strongest[0].channel}"
    shares = [s.share for s in strongest]
    assert shares == sorted(shares, reverse=True)
    expected = float(means.max() / means.sum())
    assert shares[0] == pytest.approx(expected, rel=1e-4)


def test_an_atlas_without_channels_shows_those_the_projects_photos_excite_most(engine, cat):
    model = engine.model("effnet-lite0")
    coffee = photo("coffee.png")
    together = channels_photos_excite(model, "block7", [cat, coffee], 4)
    shares = {}
    for image in (cat, coffee):
        means = positive_means(engine, image, "block7")
        for channel, share in enumerate((means / means.sum()).tolist()):
            shares[channel] = shares.get(channel, 0.0) + share
    assert together == sorted(shares, key=lambda c: -shares[c])[:4]


def test_a_selection_names_the_channels_of_what_it_holds(engine, cat):
    height, width = cat.shape[:2]
    left, right = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    left[:, : width // 2], right[:, width // 2 :] = 255, 255
    params = ChannelsParams.from_mapping({"top": 4})
    everything = engine.strongest_channels(cat, params)
    assert engine.strongest_channels(cat, params, np.full((height, width), 255, np.uint8)) == (
        everything
    )
    assert engine.strongest_channels(cat, params, left) != engine.strongest_channels(
        cat, params, right
    )
    with pytest.raises(InvalidParameter, match="empty"):
        engine.strongest_channels(cat, params, np.zeros((height, width), np.uint8))


def test_dreaming_the_top_channel_raises_it_more_than_dreaming_the_whole_layer(engine, cat):
    top = engine.strongest_channels(cat, ChannelsParams.from_mapping({"top": 1}))[0]
    quick = {"steps": 4, "octaves": 3}
    alone = engine.dream(cat, DreamParams.from_mapping({**quick, "layers": top.label}))
    layer = engine.dream(cat, DreamParams.from_mapping({**quick, "layers": "block7"}))
    before = channel_mean(engine, cat, "block7", top.channel)
    gain_alone = channel_mean(engine, alone, "block7", top.channel) / before
    gain_in_layer = channel_mean(engine, layer, "block7", top.channel) / before
    assert gain_alone > max(1.5 * gain_in_layer, 1.5), (gain_alone, gain_in_layer)


# -- accentuation ---------------------------------------------------------------------------------


def test_accentuation_starts_from_the_photo_itself(cat):
    start = PhotoImage(torch.from_numpy(cat.astype(np.float32) / 255).permute(2, 0, 1), 1,
                       torch.Generator())()  # fmt: skip
    back = (start[0].permute(1, 2, 0).detach().numpy() * 255).round()
    assert np.abs(back - cat).max() <= 1


def test_accentuation_turns_a_channel_up_3x_and_keeps_the_photo_recognisable(engine, cat):
    """Against a plain dream of the same channel, taken as far: the leash and the Fourier basis
    keep the photo, where the dream's pixel steps draw over it."""
    top = engine.strongest_channels(cat, ChannelsParams.from_mapping({"top": 1}))[0]
    params = VisualizeParams.from_mapping({"layer": "block7", "channel": top.channel,
                                           "samples": 1, "steps": 128})  # fmt: skip
    accentuated = engine.visualize(params, photo=cat)[0]
    before = channel_mean(engine, cat, "block7", top.channel)
    gain = channel_mean(engine, accentuated, "block7", top.channel) / before
    similarity = luminance_ssim(accentuated, cat)
    assert accentuated.shape == cat.shape
    assert gain >= 3 and similarity >= 0.75, (gain, similarity)
    for steps in range(2, 40, 2):  # the dream of that channel, until it rose as far
        dreamed = engine.dream(cat, DreamParams.from_mapping({"layers": top.label,
                                                              "steps": steps}))  # fmt: skip
        if channel_mean(engine, dreamed, "block7", top.channel) / before >= gain:
            break
    assert luminance_ssim(dreamed, cat) < similarity - 0.1


def test_a_photo_larger_than_the_network_looks_at_gets_the_change_scaled_up_onto_it(engine, cat):
    big = np.array(Image.fromarray(cat).resize((2256, 1500), Image.BICUBIC))
    params = VisualizeParams.from_mapping({"layer": "block7", "channel": 34, "samples": 1,
                                           "steps": 8})  # fmt: skip
    accentuated = engine.visualize(params, photo=big)[0]
    assert accentuated.shape == big.shape
    seen = np.array(Image.fromarray(big).resize((1024, 681), Image.BILINEAR))
    assert channel_mean(engine, np.array(Image.fromarray(accentuated).resize((1024, 681))),
                        "block7", 34) > 1.3 * channel_mean(engine, seen, "block7", 34)  # fmt: skip
    assert luminance_ssim(accentuated, big) > 0.8  # the photo's own detail is kept
    with pytest.raises(InvalidParameter, match="grid of 29x19 positions for images of 451x300"):
        engine.visualize(VisualizeParams.from_mapping({"neuron": "3,40,2"}), photo=cat)


def test_where_the_photo_changed_is_white_there_and_black_elsewhere(cat):
    changed = cat.copy()
    changed[100:150, 200:260] = 255 - changed[100:150, 200:260]
    mask = where_changed(cat, changed)
    assert mask.shape == cat.shape[:2] and mask.dtype == np.uint8
    assert mask[110:140, 210:250].mean() > 200 and mask[:80].max() == 0


# -- MACO -----------------------------------------------------------------------------------------


def test_maco_keeps_the_spectrum_fitted_from_the_projects_photos_and_changes_only_the_phase():
    spectrum = natural_spectrum()
    assert all(0.8 < float(slope) < 2.5 for slope in spectrum.slopes)  # photos fall like 1/f
    image = MagnitudeImage(1, 128, torch.Generator().manual_seed(0))
    with torch.no_grad():
        image.phase.add_(torch.randn_like(image.phase))  # as optimisation would
        pixels = image()
        decorrelated = torch.fft.irfft2(torch.polar(image.magnitude, image.phase[0]),
                                        s=(128, 128), norm="ortho")  # fmt: skip
    amplitude = torch.fft.rfft2(decorrelated, norm="ortho").abs()
    # (but in the columns of zero and highest horizontal frequency, which a real image makes
    # symmetric)
    assert torch.allclose(amplitude[..., 1:-1], image.magnitude[..., 1:-1], rtol=1e-3)
    assert pixels.shape == (1, 3, 128, 128) and 0 < float(pixels.min()) < float(pixels.max()) < 1


def test_maco_renders_excite_their_unit(engine):
    values = {"layer": "block9", "channel": 3, "samples": 1, "size": 128, "param": "maco"}
    model = engine.model("effnet-lite0")
    start = MagnitudeImage(1, 128, torch.Generator().manual_seed(0))()
    start8 = (start[0].permute(1, 2, 0).detach().numpy() * 255).round().astype(np.uint8)
    rendered = engine.visualize(VisualizeParams.from_mapping({**values, "steps": 48}))[0]
    before, after = (channel_mean(engine, x, "block9", 3) for x in (start8, rendered))
    assert after > max(3 * before, before + 5), (before, after)
    del model


# -- exemplars ------------------------------------------------------------------------------------


def test_exemplars_are_patches_of_the_photos_that_excite_the_channel_most(engine):
    photos = [(name, photo(name)) for name in PHOTOS]
    model = engine.model("effnet-lite0")
    channel = engine.strongest_channels(photos[0][1], ChannelsParams.from_mapping({}))[0].channel
    found = exemplars(model, "block7", [channel], photos, count=4, size=96)[channel]
    assert len(found) == 4
    assert [e.strength for e in found] == sorted((e.strength for e in found), reverse=True)
    assert max(sum(e.photo == name for e in found) for name, _ in photos) <= PER_PHOTO
    rng = np.random.default_rng(0)
    by_name = dict(photos)
    for exemplar in found:
        left, top, side = exemplar.box
        image = by_name[exemplar.photo]
        assert exemplar.patch.shape == (96, 96, 3)
        assert 0 <= left <= image.shape[1] - side and 0 <= top <= image.shape[0] - side
    # the channel responds to the patches more than to patches of the same photos at random
    chosen = [channel_mean(engine, by_name[e.photo][e.box[1] : e.box[1] + e.box[2],
                                                    e.box[0] : e.box[0] + e.box[2]],
                           "block7", channel) for e in found]  # fmt: skip
    random = []
    for _, image in photos:
        side = found[0].box[2] * image.shape[0] // max(by_name[found[0].photo].shape[:2])
        side = max(side, 48)
        for _ in range(4):
            top, left = (int(rng.integers(0, image.shape[k] - side)) for k in (0, 1))
            random.append(channel_mean(engine, image[top : top + side, left : left + side],
                                       "block7", channel))  # fmt: skip
    assert np.mean(chosen) > 1.5 * np.mean(random), (chosen, random)


# -- the commands ---------------------------------------------------------------------------------


def test_the_channels_command_names_the_channels_to_type_into_layers(tmp_path, engine, cat):
    run = deepdream("channels", SAMPLES / "chelsea.png", "--layer", "block7", "--top", "3", "-q")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    expected = engine.strongest_channels(cat, ChannelsParams.from_mapping({"top": 3}))
    for line, channel in zip(lines[1:4], expected, strict=True):
        assert line.split() == [channel.label, f"{channel.share:.1%}"]
    assert "Layers" in lines[-1]


def test_the_channels_command_renders_them_beside_as_many_exemplars_as_asked(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        Image.fromarray(photo(name)).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    sheet = tmp_path / "sheet.png"
    run = deepdream("channels", SAMPLES / "coffee.png", "--top", "2", "-o", sheet, "--size",
                    "64", "--steps", "4", "--exemplars", folder, "--exemplars-each", "3",
                    "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "skipped" in run.stderr and "broken.jpg" in run.stderr
    text = Image.open(sheet).text
    assert text["deepdream:grid"] == "2x4" and text["deepdream:cell"] == "64x64"
    labels = json.loads(text["deepdream:labels"])
    assert labels[0].startswith("block7/") and labels[0][7:].isdigit()  # what Layers takes
    assert all(label.startswith("in ") and label.endswith(".png") for label in labels[1:4])
    assert labels[4].startswith("block7/")  # the next channel's row


def test_the_accentuate_command_writes_the_photo_with_the_unit_turned_up(tmp_path, cat):
    output, mask = tmp_path / "more.png", tmp_path / "where.png"
    run = deepdream("accentuate", SAMPLES / "chelsea.png", "--channel", "34", "--steps", "16",
                    "-o", output, "--change-mask", mask, "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "block7/34 from" in run.stdout and "SSIM of luminance" in run.stdout
    assert np.array(Image.open(output)).shape == cat.shape
    assert Image.open(mask).mode == "L" and Image.open(mask).size == Image.open(output).size


@pytest.mark.parametrize(
    "arguments, says",
    [
        (["channels", SAMPLES / "coffee.png", "--layer", "block99"], "block99"),
        (["channels", SAMPLES / "coffee.png", "--exemplars", SAMPLES], "-o sheet.png"),
        (["visualize", "--layer", "block7", "-o", "x.png", "--exemplars", SAMPLES], "--channel"),
        (["atlas", "--channels", "1", "-o", "x.png", "--exemplars", "nowhere"], "not a folder"),
        (["atlas", "--channels", "1", "-o", "x.png", "--exemplars", "."], "holds no photos"),
        (["accentuate", SAMPLES / "coffee.png", "-o", "x.png", "--channel", "999"], "0 to"),
    ],
)
def test_mistakes_get_one_line_that_says_what_to_do(tmp_path, arguments, says):
    run = deepdream(*arguments, "-q", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "x.png").exists()
