"""Pretrained networks to dream with: the zoo, its layer catalogue and presets."""

from ..catalogue import DEFAULT_MODEL, MODELS, PRESETS, LayerInfo, ModelSpec, model_spec
from .base import FeatureModel
from .zoo import imagenet_classes, load_model

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
