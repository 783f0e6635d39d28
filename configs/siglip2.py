"""SigLIP 2 (Tschannen et al., 2025): the sigmoid loss plus LocCa's decoder losses (captioning,
referring expressions and grounded captions on boxes) from the start, and for the last 20% of
the run SILC's self-distillation (local crops against an EMA teacher's global view) and TIPS's
masked prediction (the teacher's patch features under a mask token). On the built-in shapes,
whose records carry exact boxes and segmentation:

  python -m launch.train --config configs/siglip2.py --workdir workdirs/siglip2
  python -m launch.train --config configs/siglip2.py:plain --workdir workdirs/siglip2_plain

`plain` is the same run with the sigmoid loss alone (SigLIP), for comparison. Both are scored
by retrieval, the compositional evaluator, referring-expression accuracy (beside the box
prior) and the dense probe. `add(c)` puts the losses on any config (configs/published.py:
NAME+siglip2 at published scale).

Here the decoder is the captioner of CoCa (the causal text tower feeds a cross-attending
caption decoder), so the text tower is causal; SigLIP 2's decoder has token embeddings of its
own beside a bidirectional text encoder. Distillation and masked prediction use cosine
distances where SILC and TIPS compare distributions over learned prototypes.
"""
from configs import shapes, siglip

SELF_SUPERVISED_FROM = 80       # percent of the run: distillation and masked prediction start


def add(c):
    """SigLIP 2's losses and schedule on top of a sigmoid config (weights as config keys)."""
    c.model.text.causal = True
    c.caption.weight = 1.0              # LocCa: the decoder's captioning ...
    c.grounding.weight = 1.0            # ... and its referring expressions / grounded captions
    c.teacher.momentum = 0.98
    c.teacher.start_percent = float(SELF_SUPERVISED_FROM)     # until then the params themselves
    start = ((SELF_SUPERVISED_FROM - 0.01, 0.0), (SELF_SUPERVISED_FROM, 1.0))
    c.distill.weight, c.distill.schedule = 1.0, start
    c.masked_prediction.weight, c.masked_prediction.schedule = 0.25, start
    return c


def get_config(arg: str | None = None):
    if arg not in (None, "", "plain"):
        raise ValueError(f"configs/siglip2.py:{arg}: the argument is empty or 'plain'")
    c = shapes.get_config("contrastive")
    s = siglip.get_config()
    c.contrastive.name = s.contrastive.name
    c.contrastive.sigmoid_bias_init = s.contrastive.sigmoid_bias_init
    c.eval.dense_probe = ("shapes",)
    # Twice the other shapes recipes' 400 steps: the decoder places boxes far later than it
    # writes captions (docs/BENCHMARKS.md).
    c.total_steps = 800
    c.checkpoint_every_steps = 200
    if arg == "plain":
        return c
    add(c)
    # 2-pixel bins at 32 pixels: boxes (about 9 pixels a side) still come out right at their
    # bins' centres, with half the classes of the default's per coordinate.
    c.grounding.bins = 16
    c.eval.refexp = ("shapes",)         # the plain run has no decoder to write boxes
    return c
