"""DeepDream for GIMP: the PyTorch engine (models, objectives, the dream loop) and its daemon."""

from pathlib import Path

__version__ = "0.1.0"

SAMPLES = Path(__file__).resolve().parent / "samples"
"""The project's own photos: the sample dream's, the atlas's default channels', and the natural
spectrum MACO images keep."""
