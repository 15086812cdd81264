"""Type stubs of the extension module (the classes `diffseg` re-exports)."""

import os
import pathlib
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
    final,
)

import numpy as np
import numpy.typing as npt

class _PILImage(Protocol):
    """What is used of a PIL.Image.Image (Pillow is optional, so it is not imported here)."""

    @property
    def mode(self) -> str: ...
    def convert(self, mode: str) -> Any: ...

_ImageInput = Union[npt.NDArray[np.uint8], _PILImage, str, "os.PathLike[str]"]
"""A uint8 array H×W (grey), H×W×3 (RGB) or H×W×4 (RGBA), a PIL image, or a path."""

_Progress = Callable[[Dict[str, Any]], None]
"""Called with one event dict: see `Segmenter` and `Segmenter.segment_batch`."""

_Tau = Union[float, Sequence[float]]
"""One KL threshold for every iteration, or one per iteration."""

DEFAULT_MODEL: str
"""The Hugging Face model loaded when no weights are given (SD 1.5)."""
PAPER_MODEL: str
"""The paper's model (SD 1.4)."""
__version__: str

__all__ = [
    "Segmenter",
    "Segmentation",
    "merge",
    "WeightsNotFoundError",
    "BackendUnavailableError",
    "ModelError",
    "DEFAULT_MODEL",
    "PAPER_MODEL",
    "__version__",
]

class WeightsNotFoundError(FileNotFoundError):
    """No Stable Diffusion weights where they were looked for (the message lists where, and the files needed)."""

class BackendUnavailableError(RuntimeError):
    """The backend or precision is not compiled into this build, or its device cannot start here."""

class ModelError(RuntimeError):
    """The weights exist but cannot be loaded, or the model's output is unusable."""

@final
class Segmentation:
    """A segmentation: every pixel labelled 0..num_segments."""

    @property
    def labels(self) -> npt.NDArray[np.uint16]:
        """The label map, uint16 [height, width], read-only."""
    @property
    def num_segments(self) -> int:
        """Number of segments (labels are 0..num_segments)."""
    @property
    def height(self) -> int:
        """Label map rows."""
    @property
    def width(self) -> int:
        """Label map columns."""
    def masks(self) -> npt.NDArray[np.bool_]:
        """One boolean mask per segment, [num_segments, height, width]."""
    @property
    def segments(self) -> List[Dict[str, Any]]:
        """segment-anything's automatic-mask-generator records: `segmentation` (a bool
        [height, width] mask), `area`, `bbox` ([x, y, width, height]) and `label`; with a
        vocabulary also `name`, `name_score` and `names` ((name, score) pairs, best first)."""
    def segments_as(
        self, output_mode: Literal["binary_mask", "coco_rle", "uncompressed_rle"] = "binary_mask"
    ) -> List[Dict[str, Any]]:
        """`segments` with the mask as a bool [height, width] array ("binary_mask"),
        pycocotools' compressed RLE ({"size": [h, w], "counts": str}, "coco_rle") or
        COCO's uncompressed RLE ({"size": [h, w], "counts": [runs...]}, "uncompressed_rle")."""
    def palette(self) -> npt.NDArray[np.uint8]:
        """Each segment's colour in overlays, uint8 [num_segments, 3] (RGB)."""
    def to_supervision(self) -> Any:
        """The segments as `supervision.Detections` (xyxy, mask, class_id = label,
        data["area"]); ImportError when supervision is not installed."""
    def _repr_png_(self) -> bytes:
        """The overlay as PNG (the segmented image, scaled to at most 1024 px a side; the
        colours alone for a result of `merge`)."""
    def _repr_html_(self) -> str:
        """The overlay inline beside a legend of the segments (colour, label, area)."""
    def overlay(
        self,
        image: _ImageInput,
        opacity: float = 0.5,
        outline: Optional[Tuple[int, int, int]] = (255, 255, 255),
    ) -> npt.NDArray[np.uint8]:
        """The image with each segment tinted (opacity 0: the image only, 1: the colour only)
        and outlined (None: no outline), uint8 RGB [H, W, 3]; the defaults draw the CLI's
        .overlay.png."""
    def save_labels(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the label map as a PNG whose pixel values are the labels (an 8-bit palette PNG
        in the overlay's colours up to 256 segments, else 16-bit grey), atomically."""

@final
class Segmenter:
    """DiffSeg with a Stable Diffusion 1.x model loaded once; usable from many threads."""

    def __new__(
        cls,
        backend: str = "cpu",
        weights: Optional[Union[str, "os.PathLike[str]"]] = None,
        model: str = ...,
        precision: Literal["f32", "f16"] = "f32",
        fit: Literal["pad", "center-crop"] = "pad",
        tau: Union[_Tau, Literal["auto"], None] = None,
        iterations: Optional[int] = None,
        anchors: Optional[int] = None,
        refine: bool = False,
        allow_download: bool = True,
        max_pixels: int = 67108864,
        progress: Union[_Progress, None, Literal[False]] = None,
        method: Literal["diffseg", "diffcut"] = "diffseg",
        alpha: Optional[float] = None,
        mask_size: Optional[int] = None,
        pamr: bool = False,
        median: bool = False,
        input_size: Optional[int] = None,
        seed: Optional[int] = None,
        vocabulary: Optional[Union[str, Sequence[str]]] = None,
        top_k: int = 3,
        tokenizer: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> "Segmenter":
        """Finds (or downloads) the weights and loads the model.

        backend: "cpu", "wgpu", "wgpu:N", "cuda" or "cuda:N" (GPU ones need a build with them).
        weights: a diffusers folder or single-file .safetensors checkpoint; by default
        $DIFFSEG_WEIGHTS, then the Hugging Face cache of `model`, then a download
        (unless allow_download is False: then WeightsNotFoundError).
        method: "diffseg" (self-attention merged by KL divergence) or "diffcut" (one layer's
        features cut by a recursive normalized cut, docs/method.md §9).
        tau, iterations, anchors, refine: DiffSeg's merging options; None is the paper's value
        (tau 1.1, 3 iterations, 16 anchors per side). With "diffcut", tau is the cut's
        threshold (None: 0.5), or "auto" for DiffCut's eigengap variant (no threshold;
        "auto" with "diffseg" raises ValueError), and iterations, anchors, refine are refused.
        alpha, mask_size, pamr, median, input_size, seed: DiffCut's options (None: alpha 10,
        128² mask, a 1024-pixel input, seed 42); refused with "diffseg".
        vocabulary: name each segment (DiffSeg only, docs/method.md §10): a list of entries,
        a comma-separated string, or a preset ("coco-stuff-27", "cityscapes-27"); each segment
        dict then has `name`, `name_score` and `names` (the top_k best (name, score) pairs).
        The model's tokenizer/ reads it, or `tokenizer` (a folder with vocab.json and
        merges.txt: needed for a single-file checkpoint); without one, ValueError.
        max_pixels: the most pixels (width × height) an image may have, 64 megapixels by
        default; a larger image (a file: from its header, before decoding) raises ValueError.
        progress: called with {"stage": "download", "file", "done", "total"} (bytes) as
        each file downloads and {"stage": "retry", "file", "reason", "delay"} before a
        retry; None (default) prints lines on sys.stderr, False reports nothing. Ctrl-C
        stops a download with KeyboardInterrupt (the next run resumes it).
        """
    def segment(self, image: _ImageInput) -> Segmentation:
        """Segments one image; the result has the image's size."""
    def segment_batch(
        self,
        images: Iterable[_ImageInput],
        batch_size: Optional[int] = None,
        progress: Union[_Progress, None, Literal[False]] = None,
    ) -> List[Segmentation]:
        """Segments images, batch_size per model pass (default: all in one); one result
        per image, in order. progress is called before the first pass and after each with
        {"stage": "segment", "done": images, "total": images}. Ctrl-C raises
        KeyboardInterrupt between images read and between passes."""
    def attention(self, image: _ImageInput) -> Dict[str, npt.NDArray[Any]]:
        """Self-attention averaged over heads and layers, per grid:
        {"self_attn.64": float32 [4096, 4096], ...}, before any merging, and
        "placement": int64 [image_height, image_width, top, left, side], where the
        model's square input lay in the image."""
    @property
    def input_size(self) -> int:
        """The side of the model's square input (512 for SD 1.x)."""
    @property
    def backend(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def fit(self) -> str: ...
    @property
    def weights(self) -> pathlib.Path:
        """Where the weights were loaded from."""
    @property
    def max_pixels(self) -> int: ...
    @property
    def tau(self) -> List[float]: ...
    @property
    def iterations(self) -> int: ...
    @property
    def anchors(self) -> int: ...
    @property
    def refine(self) -> bool: ...
    @property
    def vocabulary(self) -> Optional[List[str]]:
        """The entries segments are named from (a preset's class names, or the list given);
        None when segments are not named."""
    @property
    def top_k(self) -> Optional[int]:
        """How many best names a named segment keeps; None when segments are not named."""

def merge(
    attention: Mapping[str, npt.NDArray[Any]],
    tau: Optional[_Tau] = None,
    iterations: Optional[int] = None,
    anchors: Optional[int] = None,
    refine: bool = False,
) -> Segmentation:
    """Merges attention (as `Segmenter.attention` returns it) into segments on the CPU,
    labelled as `Segmenter.segment` labels: at the image's size when the dict has its
    "placement", else on the model's square input (8 × the largest grid: 512 for SD 1.x).
    None is the paper's value (tau 1.1, 3 iterations, 16 anchors per side)."""

def cut(
    features: npt.NDArray[np.float32],
    tau: Union[float, Literal["auto"], None] = None,
    alpha: Optional[float] = None,
    mask_size: Optional[int] = None,
    pamr: bool = False,
    median: bool = False,
    image: Optional[_ImageInput] = None,
) -> Segmentation:
    """DiffCut without the model: the recursive normalized cut of features (float32
    [h, w, c], as `diffseg features` writes them; at most 4096 pixels) on the CPU.
    Labels lie on a mask_size × mask_size grid. None is the published value (tau 0.5,
    in (0, 1], or "auto": the eigengap variant; alpha 10; mask_size 128). pamr=True refines the labels on image (a path,
    PIL image or uint8 array; required then); median=True applies a 3×3 median filter
    last. Bad options or features raise ValueError."""
