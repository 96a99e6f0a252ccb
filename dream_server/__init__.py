"""DeepDream for GIMP: the PyTorch engine (models, objectives, the dream loop) and its daemon."""

__version__ = "0.1.0"
