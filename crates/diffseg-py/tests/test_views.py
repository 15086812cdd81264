"""What tools read from a result: segment-anything's records (binary masks by default),
pycocotools' RLE, supervision's Detections; and what a notebook shows of it."""

import base64
import io
import re
import sys

import matplotlib
import numpy as np
import pycocotools.mask as mask_api
import pytest
import supervision
from PIL import Image

import diffseg

from conftest import TAU


@pytest.fixture(scope="module")
def result(segmenter, rgb_path):
    result = segmenter.segment(rgb_path)
    assert result.num_segments >= 5, "too few segments for the checks to mean much"
    return result


def test_segments_default_to_binary_masks_as_sams_generator(result):
    labels = result.labels
    assert [record["segmentation"].dtype for record in result.segments] == [np.bool_] * result.num_segments
    for default in (result.segments, result.segments_as()):
        assert len(default) == result.num_segments
        for index, record in enumerate(default):
            assert set(record) == {"segmentation", "area", "bbox", "label"}
            np.testing.assert_array_equal(record["segmentation"], labels == index)


def test_coco_rle_is_what_pycocotools_encodes_and_decodes(result):
    labels = result.labels
    records = result.segments_as("coco_rle")
    assert len(records) == result.num_segments
    for index, record in enumerate(records):
        rle = record["segmentation"]
        assert rle["size"] == [result.height, result.width]
        assert isinstance(rle["counts"], str)
        expected = labels == index
        np.testing.assert_array_equal(mask_api.decode(rle).astype(bool), expected)
        assert rle["counts"] == mask_api.encode(np.asfortranarray(expected.astype(np.uint8)))["counts"].decode()
        assert mask_api.area(rle) == record["area"]
        np.testing.assert_array_equal(mask_api.toBbox(rle), record["bbox"])


def test_uncompressed_rle_is_the_list_form(result):
    labels = result.labels
    for index, record in enumerate(result.segments_as("uncompressed_rle")):
        rle = record["segmentation"]
        assert isinstance(rle["counts"], list) and sum(rle["counts"]) == labels.size
        decoded = mask_api.decode(mask_api.frPyObjects(rle, *rle["size"]))
        np.testing.assert_array_equal(decoded.astype(bool), labels == index)


def test_an_unknown_output_mode_names_the_choices(result):
    with pytest.raises(ValueError, match="binary_mask, coco_rle or uncompressed_rle"):
        result.segments_as("polygons")


def show_anns(anns):
    """segment-anything's notebooks/automatic_mask_generator_example.ipynb, as it is."""
    import matplotlib.pyplot as plt

    if len(anns) == 0:
        return
    sorted_anns = sorted(anns, key=(lambda x: x['area']), reverse=True)
    ax = plt.gca()
    ax.set_autoscale_on(False)

    img = np.ones((sorted_anns[0]['segmentation'].shape[0], sorted_anns[0]['segmentation'].shape[1], 4))
    img[:, :, 3] = 0
    for ann in sorted_anns:
        m = ann['segmentation']
        color_mask = np.concatenate([np.random.random(3), [0.35]])
        img[m] = color_mask
    ax.imshow(img)


def test_sams_show_anns_draws_the_default_segments(result, rgb_array):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    try:
        plt.imshow(rgb_array)
        show_anns(result.segments)
        drawn = plt.gca().get_images()[-1].get_array()
        figure.canvas.draw()
    finally:
        plt.close(figure)
    # The segments cover the image: every pixel got a segment's colour, and each
    # segment is one colour.
    assert drawn.shape == (result.height, result.width, 4)
    np.testing.assert_allclose(drawn[:, :, 3], 0.35)
    for index in range(result.num_segments):
        assert len(np.unique(drawn[result.labels == index], axis=0)) == 1


def test_supervision_reads_the_default_segments(result):
    detections = supervision.Detections.from_sam(result.segments)
    assert len(detections) == result.num_segments
    # from_sam sorts by area, largest first.
    by_area = sorted(result.segments, key=lambda record: record["area"], reverse=True)
    for mask, box, record in zip(detections.mask, detections.xyxy, by_area):
        np.testing.assert_array_equal(mask, result.labels == record["label"])
        x, y, width, height = record["bbox"]
        np.testing.assert_array_equal(box, [x, y, x + width, y + height])


def test_to_supervision_is_label_ordered_detections(result):
    detections = result.to_supervision()
    assert isinstance(detections, supervision.Detections)
    assert len(detections) == result.num_segments
    np.testing.assert_array_equal(detections.class_id, np.arange(result.num_segments))
    np.testing.assert_array_equal(detections.mask, result.masks())
    np.testing.assert_array_equal(detections.data["area"], np.bincount(result.labels.ravel()))
    from_sam = supervision.Detections.from_sam(result.segments)
    order = np.argsort(-detections.data["area"], kind="stable")
    np.testing.assert_array_equal(detections.xyxy[order], from_sam.xyxy)


def test_to_supervision_without_supervision_says_what_to_install(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # `import supervision` fails
    with pytest.raises(ImportError, match="pip install supervision"):
        result.to_supervision()


def decoded(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_png_shown_is_the_overlay_of_the_image(result, rgb_path):
    np.testing.assert_array_equal(decoded(result._repr_png_()), result.overlay(rgb_path))


def test_a_large_image_is_shown_scaled_down(segmenter, rgb_array):
    large = np.asarray(Image.fromarray(rgb_array).resize((2400, 1800), Image.NEAREST))
    shown = decoded(segmenter.segment(large)._repr_png_())
    assert shown.shape == (768, 1024, 3)


def test_a_merged_result_shows_its_colours(segmenter, rgb_path, result):
    merged = diffseg.merge(segmenter.attention(rgb_path), tau=TAU)
    np.testing.assert_array_equal(merged.labels, result.labels)
    black = np.zeros((merged.height, merged.width, 3), np.uint8)
    np.testing.assert_array_equal(decoded(merged._repr_png_()), merged.overlay(black, opacity=1.0))


def test_palette_is_the_overlays_colours(result):
    palette = result.palette()
    assert palette.dtype == np.uint8 and palette.shape == (result.num_segments, 3)
    painted = result.overlay(np.zeros((result.height, result.width, 3), np.uint8), opacity=1.0, outline=None)
    for index in range(result.num_segments):
        assert (painted[result.labels == index] == palette[index]).all()
    assert len(np.unique(palette, axis=0)) == result.num_segments


def test_the_html_shows_the_overlay_and_a_legend(result):
    page = result._repr_html_()
    image = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert image, page[:300]
    assert base64.b64decode(image.group(1)) == result._repr_png_()
    rows = re.findall(r"<tr><td><span [^>]*background:rgb\((\d+),(\d+),(\d+)\)[^>]*></span></td>"
                      r"<td>(\d+)</td><td>(\d+)</td><td>([\d.]+)%</td></tr>", page)
    areas = np.bincount(result.labels.ravel())
    assert len(rows) == result.num_segments
    for index, (red, green, blue, label, area, percent) in enumerate(rows):
        assert [int(red), int(green), int(blue)] == result.palette()[index].tolist()
        assert (int(label), int(area)) == (index, areas[index])
        assert float(percent) == pytest.approx(100 * areas[index] / result.labels.size, abs=0.05)
