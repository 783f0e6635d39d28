"""Image decoding and the crops, on encoded bytes or decoded arrays.

Training views: the crop box is chosen from the image header before decoding, so a JPEG much
larger than the crop's output is decoded at a reduced scale (libjpeg's DCT scaling via
`Image.draft`): big web images cost a fraction of a full decode. The eval view (`View`) decodes
fully and follows the pixel arithmetic of the reference libraries (torchvision's and Hugging
Face's resize sizes and crop offsets, PIL's antialiased filters), so a converted model sees the
very pixels it sees in open_clip or transformers. Output is always uint8 [size, size, 3] RGB.
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

CROPS = ("resize", "center", "random_resized")
# The eval view's resize modes (open_clip's names): the short side to the size (then a centre
# crop), both sides to the size, or the long side to the size (then padding).
RESIZES = ("shortest", "squash", "longest")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
# A centre crop's offset of (d - n) / 2 pixels: rounded half to even (torchvision, open_clip) or
# floored (Hugging Face's image processors).
CROP_ROUNDINGS = ("round", "floor")


@dataclasses.dataclass(frozen=True)
class View:
    """How an image becomes the model's input at evaluation: resized by `resize` with
    `interpolation`; `shortest` first scales the short side to floor(size / crop_fraction)
    (timm's crop_pct, big_vision's resize(size / 0.875) + central crop) and keeps the
    centre; `longest` pads with `fill` around the centre."""
    size: int
    resize: str = "shortest"
    interpolation: str = "bilinear"
    crop_fraction: float = 1.0
    crop_rounding: str = "round"
    fill: int = 0

    @classmethod
    def from_config(cls, config, resize: str | None = None) -> "View":
        """The model's eval view (model.image.*), `resize` replacing its mode where given."""
        i = config.model.image
        return cls(config.data.image_size, resize or i.resize, i.interpolation, i.crop_fraction,
                   i.crop_rounding)

    def layout(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((width, height) the image is resized to, (left, top) of the output in it; negative
        where the output pads)."""
        n = self.size
        if self.resize == "squash":
            new = (n, n)
        elif self.resize == "shortest":
            # torchvision's Resize(int) and HF's shortest_edge: the long side truncated.
            short = n if self.crop_fraction == 1 else int(math.floor(n / self.crop_fraction))
            if width <= height:
                new = (short, int(short * height / width))
            else:
                new = (int(short * width / height), short)
        elif self.resize == "longest":
            # open_clip's ResizeKeepRatio(longest=1): both sides over the larger ratio, rounded.
            ratio = max(width / n, height / n)
            new = (round(width / ratio), round(height / ratio))
        else:
            raise ValueError(f"unknown resize {self.resize!r}; choose one of {RESIZES}")
        return new, tuple(self._offset(d) for d in new)

    def _offset(self, d: int) -> int:
        n = self.size
        if d < n:                           # padded: open_clip's CenterCropOrPad
            return -((n - d) // 2)
        if self.crop_rounding == "floor":
            return (d - n) // 2
        return int(round((d - n) / 2.0))

    def window(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The output's (left, top, right, bottom) in pixels of the original image."""
        (w, h), (left, top) = self.layout(width, height)
        sx, sy = width / w, height / h
        return left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy

    def render(self, data) -> tuple[np.ndarray, tuple]:
        """(uint8 [size, size, 3], the window it shows) of an encoded or decoded image."""
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of "
                             f"{tuple(INTERPOLATIONS)}")
        img = open_image(data).convert("RGB")
        width, height = img.size
        (w, h), (left, top) = self.layout(width, height)
        if (w, h) != img.size:
            img = img.resize((w, h), INTERPOLATIONS[self.interpolation])
        x = np.asarray(img, np.uint8)
        n = self.size
        out = np.full((n, n, 3), self.fill, np.uint8)
        # Rows/columns [max(o, 0), min(o + n, d)) of the resized image land at [.. - o).
        (y0, y1), (x0, x1) = ((max(o, 0), min(o + n, d)) for o, d in ((top, h), (left, w)))
        out[y0 - top:y1 - top, x0 - left:x1 - left] = x[y0:y1, x0:x1]
        return out, self.window(width, height)


def open_image(data) -> Image.Image:
    """Encoded bytes (lazily: header only) or a uint8 array -> a PIL image."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data.squeeze(-1) if data.ndim == 3 and data.shape[-1] == 1 else data)
    return Image.open(io.BytesIO(data))


def crop_box(kind: str, width: int, height: int, rng: np.random.Generator | None = None,
             scale_min: float = 0.08, ratio=(3 / 4, 4 / 3)) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels of the region to resize to the output square.

    resize: the whole image (aspect not kept); center: the largest centred square;
    random_resized: Inception-style, area fraction in [scale_min, 1] and log-uniform aspect
    ratio, up to 10 tries, else the centred square."""
    if kind == "resize":
        return 0.0, 0.0, float(width), float(height)
    if kind == "random_resized":
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(scale_min, 1.0)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= width and h <= height:
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return x, y, x + w, y + h
    elif kind != "center":
        raise ValueError(f"unknown crop {kind!r}; choose one of {CROPS}")
    side = min(width, height)
    x, y = (width - side) / 2, (height - side) / 2
    return x, y, x + side, y + side


def render(data, size: int, kind: str = "resize", rng: np.random.Generator | None = None,
           scale_min: float = 0.08) -> np.ndarray:
    """Decodes `data`, crops per `kind` and resizes (bilinear, antialiased) to size x size.
    Corrupt or truncated images raise (PIL's OSError/SyntaxError/ValueError)."""
    return render_view(data, size, kind, rng, scale_min)[0]


def render_view(data, size: int, kind: str = "resize", rng: np.random.Generator | None = None,
                scale_min: float = 0.08) -> tuple[np.ndarray, tuple]:
    """`render`'s image and the crop window it shows (left, top, right, bottom in pixels of the
    full image), for mapping boxes into the view."""
    img = open_image(data)
    width, height = img.size
    box = window = crop_box(kind, width, height, rng, scale_min)
    if img.format == "JPEG":
        # Ask for the smallest DCT scale that keeps the box at least `size` pixels on each side.
        bw, bh = box[2] - box[0], box[3] - box[1]
        img.draft("RGB", (math.ceil(width * size / bw), math.ceil(height * size / bh)))
        sx, sy = img.size[0] / width, img.size[1] / height
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    img = img.convert("RGB")
    if img.size == (size, size) and box == (0.0, 0.0, float(size), float(size)):
        return np.asarray(img, np.uint8), window    # already the output: no resampling pass
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=box), np.uint8), window


def render_local(data, size: int, rng: np.random.Generator, scale_min: float,
                 scale_max: float) -> np.ndarray:
    """A random resized crop covering scale_min..scale_max of the image's area (a local view,
    DINO's and SILC's), at size x size."""
    img = open_image(data).convert("RGB")
    width, height = img.size
    area = width * height * rng.uniform(scale_min, scale_max)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, math.sqrt(area * aspect))
    h = min(height, math.sqrt(area / aspect))
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h)), np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> its luma (ITU-R 601, PIL's "L") in all three channels."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def rotate_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 [H, W, 3] with every pixel's hue turned by `degrees` (PIL's HSV, hue in 256
    steps); saturation and value kept, so grays stay gray."""
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees * 256 / 360)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), np.uint8)


def check(data: bytes) -> tuple[int, int, str]:
    """Fully decodes encoded bytes (catching truncation); returns (width, height, format)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.size[0], img.size[1], img.format


def dhash(image) -> int:
    """Difference hash: 64 bits, each whether a pixel of a 9x8 grey thumbnail is brighter than
    its left neighbour. Survives rescaling and recompression; near-duplicates differ in a few."""
    px = np.asarray(open_image(image).convert("L").resize((9, 8), Image.BILINEAR), np.int16)
    return int(np.packbits(px[:, 1:] > px[:, :-1]).view(">u8")[0])
