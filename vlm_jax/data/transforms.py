"""Per-example transforms: decode + crop + flip + caption sampling + tokenize (train), and the
deterministic view evaluations use. Skip markers from `sources.Parse` pass through untouched."""
from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np

from vlm_jax.data import images
from vlm_jax.data.regions import task_sequences, to_view
from vlm_jax.data.sources import BadRecordError
from vlm_jax.data.tokenizer import Tokenizer, tokenize


def _render(ex: dict, size: int, crop: str, rng, scale_min: float, strict: bool):
    """((image, crop window), None) or (None, skip marker)."""
    try:
        return images.render_view(ex["image"], size, crop, rng, scale_min), None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        msg = f"undecodable image in {ex['where']}: {type(e).__name__}: {e}"
        if strict:
            raise BadRecordError(msg + " (data.strict=True; set it False to skip and count)") from None
        return None, {"skipped": "image", "why": msg}


@dataclasses.dataclass(frozen=True)
class Augment:
    """Train view: crop per `crop` then jitter (pad and crop back) and flip; one caption sampled
    (seeded by the example's position, so a different one each epoch) and tokenized. With
    `grayscale`, that share of examples is shown in grayscale, and with `hue_shift` that share
    with its hues turned by an angle drawn from `hue_degrees`, each with one of its
    `gray_captions` (no colour named), marked `colourless` (and with no negative caption or
    region: theirs name colours)."""
    tokenizer: Tokenizer
    max_len: int
    image_size: int
    crop: str = "resize"
    crop_scale_min: float = 0.4
    crop_padding: int = 0
    flip: bool = False
    strict: bool = False
    scene_label: bool = False       # label = the example's caption set (itm.groups=scene)
    negatives: bool = False         # also one negative caption: neg_tokens, neg_mask, neg_valid
    regions: bool = False           # also one region: region_box, region_tokens/_mask/_valid
    grounding_bins: int = 0         # > 0: its LocCa task sequences instead of region_tokens/_mask
    vocab_size: int = 0             # the tokenizer's, where the grounding tokens start
    local_scale: tuple = ()         # (min, max) area: also `local_image`, a random resized crop
    grayscale: float = 0.0          # share of examples in grayscale, with their gray_captions
    hue_shift: float = 0.0          # share with hues turned, with their gray_captions
    hue_degrees: tuple = ((-180.0, 180.0),)     # [lo, hi] bands the angle is drawn from
    mark_colourless: bool = False   # each example says whether it is either (`colourless`)

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        if "skipped" in ex:
            return ex
        view, skipped = _render(ex, self.image_size, self.crop, rng, self.crop_scale_min,
                                self.strict)
        if skipped:
            return skipped
        image, window = view
        flipped = False
        if self.crop_padding:
            p = self.crop_padding
            h, w = image.shape[:2]
            padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge")
            dy, dx = rng.integers(0, 2 * p + 1, size=2)
            image = padded[dy:dy + h, dx:dx + w]
            # The view moved by (dx - p, dy - p) output pixels: so did its window.
            ox = (dx - p) * (window[2] - window[0]) / w
            oy = (dy - p) * (window[3] - window[1]) / h
            window = (window[0] + ox, window[1] + oy, window[2] + ox, window[3] + oy)
        if self.flip and rng.random() < 0.5:
            image, flipped = image[:, ::-1], True
        recolour = self.recolour(rng)
        colourless = recolour is not None
        captions = ex["captions"]
        if colourless:
            captions = ex.get("gray_captions")
            if not captions:
                raise BadRecordError(
                    f"data.grayscale and data.hue_shift need captions that name no colour (the "
                    f"source's gray_caption_key, 'gray_captions'); {ex['where']} has none")
            image = recolour(image)
        caption = captions[int(rng.integers(len(captions)))]
        ids, mask = tokenize(self.tokenizer, [caption], self.max_len)
        # The class label (-1 when the data has none): ITM never mines a same-class negative.
        # As the scene, a 30-bit hash of the caption set: examples whose captions are the same
        # set describe the same scene, and each other's captions are no negatives.
        label = (zlib.crc32("\n".join(sorted(captions)).encode()) & 0x3FFFFFFF
                 if self.scene_label else ex.get("label", -1))
        out = {"image": np.ascontiguousarray(image), "tokens": ids[0], "mask": mask[0],
               "label": np.int32(label)}
        if self.mark_colourless:
            out["colourless"] = np.bool_(colourless)
        if self.negatives:
            out.update(self.negative([] if colourless else ex.get("negative_captions", []), rng))
        if self.regions:
            regions = [] if colourless else ex.get("regions", [])
            out.update(self.region(regions, window, flipped, rng))
        if self.local_scale:    # a local view for self-distillation (SILC): a small random crop
            local = images.render_local(ex["image"], self.image_size, rng, *self.local_scale)
            local = recolour(local) if colourless else local
            out["local_image"] = local[:, ::-1] if self.flip and rng.random() < 0.5 else local
        return out

    def recolour(self, rng: np.random.Generator):
        """None (colours kept), images.grayscale, or a hue rotation by an angle drawn uniformly
        from the union of the `hue_degrees` bands. Draws nothing when neither share is set."""
        if not (self.grayscale or self.hue_shift):
            return None
        u = rng.random()
        if u < self.grayscale:
            return images.grayscale
        if u >= self.grayscale + self.hue_shift:
            return None
        bands = np.asarray(self.hue_degrees, np.float64)
        widths = bands[:, 1] - bands[:, 0]
        lo, hi = bands[rng.choice(len(bands), p=widths / widths.sum() if widths.any() else None)]
        return functools.partial(images.rotate_hue, degrees=float(rng.uniform(lo, hi)))

    def region(self, regions: list, window, flipped: bool, rng: np.random.Generator) -> dict:
        """One of the example's regions still in the view: its box in the view's [0, 1]
        coordinates and its description, tokenized; region_valid False when there is none."""
        boxes = [(b, c) for b, c in ((to_view(b, window, flipped), c) for b, c in regions)
                 if b is not None]
        box, caption = boxes[int(rng.integers(len(boxes)))] if boxes else (np.zeros(4), "")
        out = {"region_box": np.asarray(box, np.float32), "region_valid": np.bool_(bool(boxes))}
        if not self.grounding_bins:
            ids, mask = tokenize(self.tokenizer, [caption], self.max_len)
            out.update(region_tokens=ids[0], region_mask=mask[0])
        else:       # the description in the task sequences only
            t = self.tokenizer
            out.update(task_sequences(
                t.encode(caption), box, bins=self.grounding_bins, vocab_size=self.vocab_size,
                max_len=self.max_len, bos=t.bos_id if t.add_bos else None,
                eos=t.eos_id if t.add_eos else None, pad=t.pad_id))
        return out

    def negative(self, captions: list[str], rng: np.random.Generator) -> dict:
        """One of the example's negative captions, tokenized; neg_valid False (and an empty
        caption's tokens) when it has none."""
        pick = captions[int(rng.integers(len(captions)))] if captions else ""
        ids, mask = tokenize(self.tokenizer, [pick], self.max_len)
        return {"neg_tokens": ids[0], "neg_mask": mask[0], "neg_valid": np.bool_(bool(captions))}


@dataclasses.dataclass(frozen=True)
class EvalView:
    """Eval view of a padded index space: position i < n is example i, the rest are padding.
    Rows carry `index` and `valid`, so results can be put back in order and padding dropped."""
    examples: object            # a MapDataset of parsed examples
    n: int
    view: images.View

    def __call__(self, i: int) -> dict:
        ex = self.examples[i % self.n]
        image = None
        if "skipped" not in ex:
            try:        # unreadable images are counted where the outputs are gathered
                image = self.view.render(ex["image"])[0]
            except Exception:   # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ...)
                pass
        valid = i < self.n and image is not None
        if image is None:
            image = np.zeros((self.view.size, self.view.size, 3), np.uint8)
        return {"image": image, "index": np.int64(i), "valid": np.bool_(valid),
                "label": np.int32(ex.get("label", -1))}
