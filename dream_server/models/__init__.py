"""Pretrained networks to dream with: the zoo, its layer catalogue and presets."""

from .base import FeatureModel
from .zoo import (
    DEFAULT_MODEL,
    MODELS,
    PRESETS,
    LayerInfo,
    ModelSpec,
    imagenet_classes,
    load_model,
    model_spec,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "PRESETS",
    "FeatureModel",
    "LayerInfo",
    "ModelSpec",
    "imagenet_classes",
    "load_model",
    "model_spec",
]
