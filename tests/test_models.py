"""The model zoo: real weights, strict loading, a catalogue that matches the networks."""

from __future__ import annotations

import copy

import numerics
import pytest
import torch
from conftest import photo
from numerics import chain64, forward64

from dream_server.errors import UnknownLayer, UnknownModel, WeightsUnavailable
from dream_server.models import MODELS, PRESETS, imagenet_classes, load_model, model_spec
from dream_server.models.base import FeatureModel, fold_batchnorm
from dream_server.models.efficientnet_lite import EfficientNetLite0, normalize_lite
from dream_server.models.zoo import _effnet_weights_path


def top5(model: FeatureModel, name: str) -> list[str]:
    pixels = photo(name, (224, 224))
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = model(x.contiguous(memory_format=torch.channels_last), ["logits"])["logits"]
    return [imagenet_classes()[i] for i in logits[0].topk(5).indices]


@pytest.mark.parametrize(
    ("name", "acceptable"),
    [
        ("chelsea.png", {"tabby", "tiger cat", "Egyptian cat"}),
        ("coffee.png", {"espresso", "cup", "coffee mug"}),
        ("rocket.jpg", {"missile", "projectile", "space shuttle"}),
    ],
)
def test_embedded_weights_are_real_imagenet_weights(effnet, name, acceptable):
    classes = top5(effnet, name)
    assert acceptable & set(classes), f"{name}: top-5 was {classes}"


def test_embedded_model_puts_the_right_class_first_on_the_cat_and_the_coffee(effnet):
    assert top5(effnet, "chelsea.png")[0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert top5(effnet, "coffee.png")[0] == "espresso"


def embedded_effnet() -> EfficientNetLite0:
    """The bare network with the embedded weights, batch norm still separate."""
    net = EfficientNetLite0()
    net.load_state_dict(torch.load(_effnet_weights_path(), weights_only=True))
    return net


def test_folding_batch_norm_keeps_the_outputs(effnet):
    net = embedded_effnet()
    plain = FeatureModel("plain", net.named_stages(), normalize_lite, 64)
    folded_net = copy.deepcopy(net)
    assert fold_batchnorm(folded_net) == 49  # stem, head, and every conv of the 16 blocks
    folded = FeatureModel("folded", folded_net.named_stages(), normalize_lite, 64)
    x = torch.rand(2, 3, 160, 200)
    layers = ["block9", "logits"]
    with torch.no_grad():
        expected = numerics.estimate(lambda g: forward64(effnet, x, layers, g))
        for name, model in (("plain", plain), ("folded", folded)):
            activations = model(x, layers)
            for layer in layers:
                numerics.assert_within_rounding(activations[layer], expected[layer], name + layer)


def plain_folded_effnet() -> FeatureModel:
    """The embedded model through PyTorch's own autograd: the reference for the fast path."""
    net = embedded_effnet()
    fold_batchnorm(net)
    return FeatureModel("plain", net.named_stages(), normalize_lite, 64)


def score(activations: dict[str, torch.Tensor], layers: list[str]) -> torch.Tensor:
    # Squares give the gradient a full tensor, means a broadcast one: both reach the chains.
    return activations[layers[0]].square().mean() + sum(a.mean() for a in activations.values())


def input_gradient(model, pixels: torch.Tensor, layers: list[str]) -> torch.Tensor:  # noqa: ANN001
    image = pixels.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    (gradient,) = torch.autograd.grad(score(model(image, layers), layers), image)
    return gradient


@pytest.mark.parametrize("size", [(384, 512), (227, 301), (100, 131)])
def test_fast_cpu_path_computes_the_network_to_within_float32_rounding(effnet, size):
    # Even and odd sizes: stride-2 layers pad asymmetrically on even ones.
    pixels = torch.from_numpy(photo("chelsea.png", size[::-1])).permute(2, 0, 1)[None] / 255.0
    layers = ["block10", "stem", "block3", "head", "logits"]
    plain = plain_folded_effnet()
    channels_last = pixels.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast_activations, plain_activations = effnet(channels_last, layers), plain(pixels, layers)
        expected = numerics.estimate(lambda g: forward64(effnet, pixels, layers, g))
        for layer in layers:
            numerics.assert_within_rounding(fast_activations[layer], expected[layer], layer)
            numerics.assert_within_rounding(plain_activations[layer], expected[layer], layer)
    # Rounding near a ReLU6's edges may flip its clamp: the perturbed runs flip them too.
    expected = numerics.estimate(
        lambda g: input_gradient(lambda x, names: forward64(effnet, x, names, g), pixels, layers)
    )
    numerics.assert_within_rounding(input_gradient(effnet, pixels, layers), expected, "fast")
    numerics.assert_within_rounding(input_gradient(plain, pixels, layers), expected, "plain")


@pytest.mark.parametrize("stage", ["stem", "block3", "block4", "head"])
def test_other_devices_path_matches_the_fast_cpu_path(effnet, stage):
    # The stem pads its RGB input by a copy, block3 has a stride-2 5x5 depthwise kernel, block4
    # a skip, the head ends in a clamp.
    chain = effnet.stages[stage]
    channels = chain.convs[0].weight.shape[1] * chain.convs[0].groups
    for height, width in [(32, 48), (33, 49), (32, 49)]:
        x = torch.rand(2, channels, height, width)
        with torch.no_grad():
            expected = numerics.estimate(lambda g, x=x: chain64(chain, x, g))
            numerics.assert_within_rounding(chain(x), expected, f"{stage} fused")
            numerics.assert_within_rounding(chain.autograd_forward(x), expected, f"{stage} plain")
        for reduce in (torch.Tensor.mean, lambda y: y.square().sum()):  # broadcast, full

            def gradient(forward, x=x, reduce=reduce):  # noqa: ANN001, ANN202
                leaf = x.clone().requires_grad_(True)
                return torch.autograd.grad(reduce(forward(leaf)), leaf)[0]

            expected = numerics.estimate(
                lambda g, gradient=gradient: gradient(lambda v: chain64(chain, v, g))
            )
            numerics.assert_within_rounding(gradient(chain), expected, f"{stage} fused gradient")
            numerics.assert_within_rounding(
                gradient(chain.autograd_forward), expected, f"{stage} plain gradient"
            )


def test_frozen_convolutions_use_weights_loaded_after_their_first_use(effnet):
    chain = copy.deepcopy(effnet.stages["block3"])
    x = torch.rand(1, 24, 32, 32)
    chain(x)  # works out and caches the padded kernels for this size
    chain.load_state_dict({name: value * 0.5 for name, value in chain.state_dict().items()})
    with torch.no_grad():
        expected = numerics.estimate(lambda g: chain64(chain, x, g))
        numerics.assert_within_rounding(chain(x), expected, "after loading")


def test_forward_stops_at_the_deepest_requested_layer(effnet):
    ran = []
    hooks = [
        stage.register_forward_hook(lambda *_, name=name: ran.append(name))
        for name, stage in effnet.stages.items()
    ]
    try:
        effnet(torch.rand(1, 3, 96, 96), ["block2", "block5"])
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == ["stem", "block0", "block1", "block2", "block3", "block4", "block5"]


def test_models_are_frozen_and_stay_in_eval_mode(effnet):
    assert not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.training
    assert not any(m.training for m in effnet.modules())


@pytest.mark.parametrize("name", list(MODELS))
def test_catalogue_lists_exactly_the_layers_each_network_has(name):
    spec = model_spec(name)
    net = spec.build()
    fold_batchnorm(net)
    model = FeatureModel(name, spec.stages(net), spec.normalize, spec.min_input_size)
    assert model.layer_names == spec.layer_names
    assert all(layer.description for layer in spec.layers)
    outputs = model(torch.rand(1, 3, 224, 224), spec.layer_names)
    assert outputs["logits"].shape[-1] == (1000 if spec.imagenet_classes else 1008)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_has_every_preset_on_its_own_layers(name):
    spec = model_spec(name)
    assert set(spec.presets) == set(PRESETS)
    for weights in spec.presets.values():
        assert weights and set(weights) <= set(spec.layer_names)


def test_presets_go_from_shallow_to_deep():
    for spec in MODELS.values():
        depth = {layer: i for i, layer in enumerate(spec.layer_names)}
        deepest = [max(depth[layer] for layer in spec.presets[p]) for p in PRESETS]
        assert deepest == sorted(deepest), spec.name


def test_unknown_model_and_layer_say_what_exists(effnet):
    with pytest.raises(UnknownModel, match="effnet-lite0.*googlenet"):
        model_spec("alexnet")
    with pytest.raises(UnknownLayer, match="block10") as info:
        effnet(torch.rand(1, 3, 64, 64), ["mixed4c"])
    assert "--list-layers effnet-lite0" in str(info.value)


def test_a_local_weights_file_loads_strictly(tmp_path):
    path = tmp_path / "lucent-inception.pth"
    reference = MODELS["inception-v1"].build()
    torch.save(reference.state_dict(), path)
    model = load_model("inception-v1", weights_path=path)
    assert model.layer_names[-1] == "logits"
    bad = reference.state_dict()
    bad.pop("mixed4c_1x1_pre_relu_conv.bias")
    bad["mixed5b_5x5_pre_relu_conv.weight"] = torch.zeros(1, 1, 5, 5)
    torch.save(bad, path)
    with pytest.raises(WeightsUnavailable, match="1 missing .*1 wrong shape") as info:
        load_model("inception-v1", weights_path=path)
    assert "inception-v1" in str(info.value)


def test_a_file_that_is_not_weights_is_refused_with_a_clear_message(tmp_path):
    junk = tmp_path / "weights.pth"
    junk.write_bytes(b"definitely not a pickle")
    with pytest.raises(WeightsUnavailable, match="not a PyTorch weights file"):
        load_model("googlenet", weights_path=junk)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_model("googlenet", weights_path=tmp_path / "missing.pth")
