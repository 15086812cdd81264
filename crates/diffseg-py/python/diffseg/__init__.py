"""DiffSeg: unsupervised zero-shot image segmentation with Stable Diffusion, in Rust.

numpy in, numpy out; no torch. See docs/python.md in the repository.

>>> import diffseg
>>> segmenter = diffseg.Segmenter()              # finds or downloads SD 1.5
>>> result = segmenter.segment("photo.jpg")      # or a numpy array, or a PIL image
>>> result.labels.shape, result.num_segments
"""

from ._diffseg import (
    DEFAULT_MODEL,
    PAPER_MODEL,
    BackendUnavailableError,
    ModelError,
    Segmentation,
    Segmenter,
    WeightsNotFoundError,
    __version__,
    cut,
    merge,
)

__all__ = [
    "DEFAULT_MODEL",
    "PAPER_MODEL",
    "BackendUnavailableError",
    "ModelError",
    "Segmentation",
    "Segmenter",
    "WeightsNotFoundError",
    "__version__",
    "cut",
    "merge",
]
