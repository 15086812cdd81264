"""diffseg.cut: DiffCut's normalized cut on features in hand, without the model."""

import numpy as np
import pytest

import diffseg


def two_regions(height=8, width=8, channels=6):
    """Features whose left and right halves point in two orthogonal directions (plus a
    little noise, so no two pixels are identical): the cut must find the two halves."""
    rng = np.random.default_rng(0)
    features = np.zeros((height, width, channels), np.float32)
    features[:, : width // 2, 0] = 1.0
    features[:, width // 2 :, 1] = 1.0
    features += rng.normal(0, 0.01, features.shape).astype(np.float32)
    return features


def test_cut_finds_the_two_regions():
    result = diffseg.cut(two_regions(), mask_size=16)
    assert result.labels.shape == (16, 16)
    assert result.num_segments == 2
    left, right = result.labels[:, :8], result.labels[:, 8:]
    # One label per half, different: the split up to a renaming of labels.
    assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1
    assert left[0, 0] != right[0, 0]


def test_defaults_are_the_published_ones():
    features = two_regions()
    default = diffseg.cut(features)
    assert default.labels.shape == (128, 128)
    explicit = diffseg.cut(features, tau=0.5, alpha=10.0, mask_size=128)
    np.testing.assert_array_equal(default.labels, explicit.labels)


def test_any_memory_order_gives_the_same_labels():
    features = two_regions()
    fortran = np.asfortranarray(features)
    np.testing.assert_array_equal(
        diffseg.cut(fortran, mask_size=16).labels, diffseg.cut(features, mask_size=16).labels
    )


def test_pamr_refines_on_the_image():
    features = two_regions()
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 16:] = 255
    refined = diffseg.cut(features, mask_size=16, pamr=True, median=True, image=image)
    assert refined.labels.shape == (16, 16)
    assert refined.num_segments == 2


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"tau": 1.5}, ValueError, "must be finite, above 0 and at most 1"),
        ({"tau": [0.5, 0.4]}, ValueError, "DiffCut takes one tau"),
        ({"alpha": 0.0}, ValueError, "alpha 0 must be finite and positive"),
        ({"mask_size": 0}, ValueError, "mask size 0 must be between 1 and"),
        ({"pamr": True}, ValueError, "pamr=True needs the image"),
    ],
)
def test_bad_options(options, error, message):
    with pytest.raises(error) as raised:
        diffseg.cut(two_regions(), **options)
    assert message in str(raised.value)


def test_bad_features():
    with pytest.raises(TypeError, match=r"float32 numpy array \[h, w, c\]"):
        diffseg.cut(two_regions().astype(np.float64))
    with pytest.raises(TypeError, match="3-D"):
        diffseg.cut(np.zeros((8, 8), np.float32))
    broken = two_regions()
    broken[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="row 1, column 2, channel 3 is not finite"):
        diffseg.cut(broken)
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        diffseg.cut(np.ones((65, 64, 1), np.float32))


def test_tau_auto_is_the_eigengap_variant():
    features = two_regions()
    auto = diffseg.cut(features, tau="auto", mask_size=16)
    assert auto.num_segments == 2
    np.testing.assert_array_equal(auto.labels, diffseg.cut(features, tau="AUTO", mask_size=16).labels)


def test_segmenter_runs_diffcut(rgb_path):
    from conftest import TINY_WEIGHTS

    segmenter = diffseg.Segmenter(
        weights=TINY_WEIGHTS, allow_download=False, method="diffcut", input_size=64, mask_size=32
    )
    result = segmenter.segment(rgb_path)
    # Labels at the image's own size (96×72), as DiffSeg's.
    assert result.labels.shape == (72, 96)
    assert result.num_segments >= 1
    auto = diffseg.Segmenter(
        weights=TINY_WEIGHTS, allow_download=False, method="diffcut", input_size=64, mask_size=32,
        tau="auto",
    ).segment(rgb_path)
    assert auto.labels.shape == (72, 96)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="diffcut", anchors=8), "anchors is an option of DiffSeg"),
        (dict(method="diffseg", alpha=5.0), "alpha is an option of DiffCut"),
        (dict(method="diffcut", input_size=100), "multiple of 8"),
        (dict(method="kmeans"), "unknown method"),
        (dict(method="diffseg", tau="auto"), "tau auto is DiffCut's eigengap variant"),
    ],
)
def test_method_options_are_checked(options, message):
    from conftest import TINY_WEIGHTS

    with pytest.raises(ValueError, match=message):
        diffseg.Segmenter(weights=TINY_WEIGHTS, allow_download=False, **options)
