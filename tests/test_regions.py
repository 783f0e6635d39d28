"""Box-annotated regions: validation naming the record, and boxes that follow the training
view's crop, padding and flip (checked on the shapes renderer's own segmentation)."""
import io

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import records, regions
from vlm_jax.data.builtin import shapes
from vlm_jax.data.tokenizer import ByteTokenizer
from vlm_jax.data.transforms import Augment


@pytest.mark.parametrize("bad, message", [
    ([{"box": [0, 0, 10, 10]}], r"region #0 needs 'box' and 'caption'"),
    ([{"box": [0, 0, 10], "caption": "x"}], r"region #0: 'box' must be 4 numbers"),
    ([{"box": [0, 0, 1, 1], "caption": "x"}, {"box": [5, 5, 5, 9], "caption": "x"}],
     r"region #1: box \[5.0, 5.0, 5.0, 9.0\] is empty or outside the 20x10 image"),
    ([{"box": [0, 0, 10, 11], "caption": "x"}], r"region #0: box .* outside the 20x10 image"),
    ([{"box": [0, 0, 10, 10], "caption": "  "}], r"region #0 has an empty caption"),
    ({"box": [0, 0, 1, 1]}, r"'regions' must be a list"),
])
def test_malformed_regions_are_named(bad, message):
    with pytest.raises(regions.RegionError, match=r"^record #3 of f: " + message):
        regions.check(bad, 20, 10, "record #3 of f")
    ok = regions.check([{"box": [0, 0, 20, 10], "caption": " all "}], 20, 10, "r")
    np.testing.assert_array_equal(ok[0][0], [0, 0, 20, 10])
    assert ok[0][1] == "all"


def test_region_boxes_follow_the_view(data_dir):
    """Each region's view box against the extent of its object in the same view of the
    renderer's segmentation (drawn as the image): random resized crops, padding jitter, flips."""
    rng = np.random.default_rng(0)
    checked = 0
    for ex in list(shapes.examples("test"))[:40]:
        seg = np.asarray(Image.open(io.BytesIO(ex["segmentation"])))
        for k, r in enumerate(ex["regions"]):       # the renderer's boxes are the drawn extent
            ys, xs = np.nonzero(seg == k + 1)
            assert r["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # Object k drawn in channel k alone, so that resampling blends it with background only.
        image = (255 * (seg[..., None] == np.arange(1, 4))).astype(np.uint8)
        parsed = {"image": records.encode_png(image), "captions": ["x"], "where": "r",
                  "regions": regions.check(ex["regions"], 64, 64, "r")}
        for crop, padding in (("resize", 0), ("random_resized", 4)):
            view = Augment(ByteTokenizer(), 40, 128, crop=crop, crop_scale_min=0.6,
                           crop_padding=padding, flip=True, regions=True)(parsed, rng)
            if not view["region_valid"]:
                continue
            caption = ByteTokenizer().decode(view["region_tokens"][view["region_mask"]])
            k = [r["caption"] for r in ex["regions"]].index(caption)
            ys, xs = np.nonzero(view["image"][..., k] >= 128)
            want = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 128
            box = view["region_box"]
            # Away from the edges (which the padding jitter fills by repeating the crop's
            # border, object pixels included), the object's extent.
            if np.all((box > 5 / 128) & (box < 1 - 5 / 128)):
                np.testing.assert_allclose(box, want, atol=2.5 / 128)
                checked += 1
            elif padding == 0:      # cut by the crop: the box clipped, the visible part inside
                assert np.all(box[:2] <= want[:2] + 2.5 / 128) and np.all(
                    box[2:] >= want[2:] - 2.5 / 128), (box, want)
    assert checked > 30
