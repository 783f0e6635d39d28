"""Recipes on the built-in shapes (1-3 coloured shapes, left to right, with compositional
captions; the test split's scenes all hold a colour-shape pair never seen in training), for
what fusion and generative objectives are for: binding attributes to objects and relations.

  python -m launch.train --config configs/shapes.py --workdir workdirs/shapes_clip
  python -m launch.train --config configs/shapes.py:albef --workdir workdirs/shapes_albef
  python -m launch.train --config configs/shapes.py:coca --workdir workdirs/shapes_coca
  python -m launch.train --config configs/shapes.py:flava --workdir workdirs/shapes_flava

The argument picks the objectives: contrastive (the default; CLIP's softmax loss), albef (+ ITM
on hard negatives and MLM through a fusion encoder), coca (+ captioning) or flava (albef's +
masked image modelling, the losses balanced). Evaluated on the shapes test split: retrieval (and
ITM re-ranking, MLM accuracy where the heads exist) and the compositional evaluator (swap /
order / count, scored by ITC, ITM and caption likelihood); the same on `shapes_seen`, the val
split's new scenes of seen colour-shape pairs, to tell what a model does not generalise to from
what it has not learnt.
"""
from configs import albef, coca, flava, quickstart
from vlm_jax import config as config_lib
from vlm_jax.data.builtin import shapes

VARIANTS = {"contrastive": lambda: quickstart.get_config("softmax"),
            "albef": albef.get_config, "coca": coca.get_config, "flava": flava.get_config}


def get_config(arg: str | None = None):
    arg = arg or "contrastive"
    if arg not in VARIANTS:
        raise ValueError(f"configs/shapes.py:{arg}: choose one of {sorted(VARIANTS)}")
    c = VARIANTS[arg]()
    c.data.name = "shapes"
    # Word-level: the longest caption is 15 words and marks (77 bytes), plus BOS and EOS.
    c.tokenizer.name, c.tokenizer.path = "hf", shapes.TOKENIZER
    c.tokenizer.max_len = 20
    # Where data.hue_shift is set: angles that turn no training object into a held-out pair.
    c.data.hue_shift_degrees = shapes.hue_shifts()
    c.batch_size = 128
    c.total_steps = 400
    c.checkpoint_every_steps = 100
    c.eval.zeroshot = ()            # shapes' only classes are counts: compositional has them
    c.eval.datasets.shapes_seen = config_lib.eval_dataset(kind="builtin", path="shapes",
                                                          split="val")
    sets = ("shapes", "shapes_seen")
    c.eval.retrieval = c.eval.compositional = sets
    if c.itm.weight > 0:               # the fusion recipes (albef, flava)
        # Many images show the same scene (in a batch of 128, about 60 have a twin) and the
        # label is only the object count: the same caption set is what makes a match. By label
        # no scene with the same count would be a negative; by caption the mined "negatives"
        # would often be the twin's captions, true of the image.
        c.itm.groups = "scene"
        c.eval.itm_rerank = sets
        c.eval.mlm = ("shapes",)
    return c
