"""Shared fixtures: the tiny random-weight model and small test images."""

import pathlib

import numpy as np
import pytest
from PIL import Image

import diffseg

REPOSITORY = pathlib.Path(__file__).resolve().parents[3]
TINY_WEIGHTS = REPOSITORY / "crates" / "diffseg-sd" / "tests" / "fixtures" / "tiny"
PHOTOS = REPOSITORY / "examples" / "images"
# The tiny random-weight model's attention is nearly uniform: at the paper's τ 1.1 every
# image is one segment, which would make every comparison of labels vacuous. At this τ
# the test images get about 20 segments (test_segment checks there are several).
TAU = 0.004


@pytest.fixture(scope="session")
def segmenter() -> diffseg.Segmenter:
    """The tiny fixture model (128 px input), never downloading."""
    return diffseg.Segmenter(weights=TINY_WEIGHTS, allow_download=False, tau=TAU)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> pathlib.Path:
    """Three small PNGs cut from the repository's photos: a non-square RGB one,
    a square one of the tiny model's input size, and a grey one."""
    folder = tmp_path_factory.mktemp("images")
    astronaut = Image.open(PHOTOS / "astronaut.png").convert("RGB")
    chelsea = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    astronaut.resize((96, 72), Image.BILINEAR).save(folder / "astronaut.png")
    chelsea.resize((128, 128), Image.BILINEAR).save(folder / "chelsea.png")
    chelsea.resize((60, 80), Image.BILINEAR).convert("L").save(folder / "grey.png")
    return folder


@pytest.fixture(scope="session")
def rgb_path(image_folder) -> pathlib.Path:
    return image_folder / "astronaut.png"


@pytest.fixture(scope="session")
def rgb_array(rgb_path) -> np.ndarray:
    return np.asarray(Image.open(rgb_path))
