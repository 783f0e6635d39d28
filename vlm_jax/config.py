"""The config schema: every key the framework reads, its type, its default, and the checks.

Each key is declared once in `defaults()` (or `source()`): its default gives its type, a key with
a closed set of values declares them there (`_choice`), and a comment says what it does. A recipe (`configs/*.py`) starts from `defaults()` and changes values; `validate` then rejects any
key the schema lacks (naming the closest valid key), any value of the wrong type and any value
outside its allowed choices, before anything is computed.

Durations (`total`, `stop_at`, `log_every`, `checkpoint_every`, `eval_every`, `optim.warmup`,
`teacher.start`, `eval.<evaluator>_every`) are given in at most one unit: `<name>_steps | _epochs | _examples |
_percent` (percent of the total steps). No unit holds a value in `defaults()`, so a recipe sets
the unit it wants without undoing another, and the command line can set any unit of any recipe.
`DURATIONS` says what an unset duration means; `total` must be set to train.
"""
from __future__ import annotations

import difflib
import functools
import json
import math
from typing import Iterable

import ml_collections
from ml_collections import config_dict

from vlm_jax.data.images import CROP_ROUNDINGS, INTERPOLATIONS, RESIZES
from vlm_jax.models.transformer import ACTIVATIONS, REMAT_POLICIES

UNITS = ("steps", "epochs", "examples", "percent")
CROPS = ("resize", "center", "random_resized")
UNIT_TYPES = {"steps": int, "epochs": float, "examples": int, "percent": float}
# Evaluators (modules of vlm_jax/evals): each has eval.<name> (datasets), eval.<name>_every_*
# and eval.<name>_prefix; options of their own follow their datasets in `defaults()`.
EVALUATORS = ("zeroshot", "retrieval", "itm_rerank", "mlm", "linear_probe", "logistic_probe",
              "compositional", "refexp", "dense_probe")
REQUIRED = "required"
# Duration -> what leaving it unset means: REQUIRED, (unit, value), or None (the caller decides:
# eval_every unset evaluates at the last step only; eval.<name>_every unset follows eval_every).
DURATIONS = {"total": REQUIRED, "log_every": ("steps", 10), "checkpoint_every": ("steps", 200),
             "eval_every": None, "stop_at": None, "optim.warmup": ("steps", 50),
             "teacher.start": ("steps", 0),
             **{f"eval.{name}_every": None for name in EVALUATORS}}

# Keys with a closed set of values: dotted path -> the values. Filled where `defaults()` and
# `source()` declare each key (`_choice`), next to its default and its comment.
CHOICES: dict[str, tuple] = {}


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range."""


def _durations(c: ml_collections.ConfigDict, name: str) -> None:
    # Typed placeholders: None until set, settable from the command line, back to None anytime.
    for unit in UNITS:
        c[f"{name}_{unit}"] = config_dict.placeholder(UNIT_TYPES[unit])


def _choice(section: ml_collections.ConfigDict, key: str, default, values, path: str) -> None:
    """section[key] = default, one of `values` (checked by validate under `path`)."""
    assert default in values, (path, default)
    section[key] = default
    CHOICES[path] = tuple(values)


def defaults() -> ml_collections.ConfigDict:
    """The full schema with its default values (a two-tower CLIP on the built-in digits)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256              # global batch, split over the data-parallel mesh axes
    # Gradients in this many sequential micro-batches of each data shard's rows: activation
    # memory of batch_size / microbatches, every contrastive negative kept (GradCache).
    c.microbatches = 1
    c.data_dir = ""                 # "" -> $VLM_JAX_DATA_DIR or ~/.cache/vlm_jax
    _durations(c, "total")          # required
    _durations(c, "log_every")      # unset: 10 steps
    _durations(c, "checkpoint_every")  # unset: 200 steps
    _durations(c, "eval_every")     # unset: evaluate at the end only
    # End this run here, the schedules still spanning `total` (a stage of a longer run, which the
    # next stage continues through `resume`); it saves and evaluates as at the end. Unset: total.
    _durations(c, "stop_at")
    c.keep_checkpoints = 2          # the most recent checkpoints kept (orbax max_to_keep)
    # Where a run with no checkpoint of its own starts (its own latest checkpoint comes first):
    c.resume = ""                   # another run's workdir or checkpoint: state + data position
    c.init = ""                     # a checkpoint whose params seed this run, chosen by:
    c.init_rules = ((".*", True),)  # (regex, load?) over param paths, first match wins
    c.keep_every_steps = 0          # also keep every checkpoint at a multiple of this; 0: none
    # non-finite loss/grads: stop (last good checkpoint kept) | skip
    _choice(c, "nonfinite", "stop", ("stop", "skip"), "nonfinite")
    c.async_checkpointing = True

    c.log = ml_collections.ConfigDict()  # metrics.jsonl is always written
    c.log.tensorboard = True        # event files in WORKDIR/tensorboard (no TensorFlow needed)
    c.log.wandb = False             # Weights & Biases (pip install wandb), one run per workdir
    c.log.wandb_project = "vlm_jax"
    # Peak TFLOP/s of one device for the `mfu` metric; 0: the data-sheet figure of known GPUs
    # and TPUs (vlm_jax/train/flops.py), no mfu elsewhere. `tflops_per_sec` is always logged.
    c.log.peak_tflops = 0.0

    c.mesh = ml_collections.ConfigDict()
    # (replica, data, fsdp, tensor), outermost first. `replica` spans slices or nodes joined by
    # the slow network (pure data parallelism between them); -1: all remaining devices.
    c.mesh.replica = 1
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical activation/param axis -> mesh axes. Axes of size 1 cost nothing.
    c.mesh.rules = (
        ("batch", ("replica", "data", "fsdp")),
        ("embed", None),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),     # a language model's key/value heads (replicated when fewer)
        ("vocab", "tensor"),
        ("kv", None),
        ("seq", None),
        ("layers", None),
    )
    # (regex over param paths, strategy): where each param lives; first match wins.
    # Strategies join steps with '|': logical (the rules above) | fsdp | replicate
    # (vlm_jax/parallel/sharding.py). E.g. (("img/.*", "replicate"), (".*", "logical|fsdp")).
    c.mesh.param_rules = ((".*", "logical|fsdp"),)
    c.mesh.fsdp_min_mib = 1.0       # fsdp leaves params smaller than this replicated

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"          # a built-in dataset, trained on when data.sources is empty
    c.data.sources = ml_collections.ConfigDict()  # name -> source(...); several form a mixture
    c.data.image_size = 32
    # Transforms; each source may override crop, crop_scale_min, crop_padding, flip, grayscale,
    # hue_shift, hue_shift_degrees.
    # resize (whole image) | center | random_resized
    _choice(c.data, "crop", "resize", CROPS, "data.crop")
    c.data.crop_scale_min = 0.4     # random_resized: smallest area fraction kept
    c.data.crop_padding = 2         # jitter: pad by this many pixels, crop back; 0 disables
    c.data.flip = False             # random horizontal flip (off for digits: a mirrored 7 is no 7)
    # Shares of examples shown without their colours, with one of their `gray_captions`
    # (captions without colour words; the records must carry them): kinds apart from colour.
    # grayscale: the luma; hue_shift: hues turned by an angle drawn from the [lo, hi] bands of
    # hue_shift_degrees (the data's named colours say which angles name none). Such an example
    # is no ITM negative of a coloured one, nor takes a colour-naming negative or region.
    c.data.grayscale = 0.0
    c.data.hue_shift = 0.0
    c.data.hue_shift_degrees = ((-180.0, 180.0),)
    c.data.strict = False           # a bad record raises (file, index) instead of being skipped
    c.data.num_threads = 2          # grain read threads (per process)
    c.data.prefetch = 2             # batches read ahead (per worker, when there are workers)
    c.data.num_workers = 0          # grain worker processes; 0 keeps decoding in-process

    c.tokenizer = ml_collections.ConfigDict()
    # bytes | sentencepiece (.model file) | hf (tokenizer.json)
    _choice(c.tokenizer, "name", "bytes", ("bytes", "sentencepiece", "hf"), "tokenizer.name")
    c.tokenizer.path = ""           # the local file, for sentencepiece and hf
    c.tokenizer.vocab_size = 0      # checked against the file; launch.compile uses it without one
    c.tokenizer.max_len = 32        # ids per caption, BOS/EOS included; longer texts keep EOS
    c.tokenizer.bos = True          # prepend the vocab's BOS token
    c.tokenizer.eos = True          # append the vocab's EOS token
    # Text cleaning before encoding, the model's own (vlm_jax/data/tokenizer.py): none |
    # lower (open_clip's CLIP: ftfy, HTML entities, whitespace, lower case) | whitespace |
    # canonicalize (big_vision's, SigLIP's: also punctuation removed)
    _choice(c.tokenizer, "clean", "none", ("none", "lower", "whitespace", "canonicalize"),
            "tokenizer.clean")
    c.tokenizer.pad_id = -1         # the id padding uses; -1: the vocabulary's pad token (or 0)
    # True: the mask covers the padding too, so the text tower attends to it and pools the
    # last position (SigLIP's text tower, trained without a mask).
    c.tokenizer.attend_padding = False

    c.model = ml_collections.ConfigDict()
    c.model.embed_dim = 128
    # activation/matmul dtype; params stay float32
    _choice(c.model, "dtype", "float32", ("float32", "bfloat16"), "model.dtype")
    # Every transformer stack: recompute activations in the backward pass by this
    # jax.checkpoint_policies policy ("none": store them all; "sublayers": nothing_saveable with
    # each block's attention and MLP recomputed apart), and scan over the blocks (one
    # compiled body; params gain a leading layers axis under `.../blocks/`, and checkpoints
    # convert between the two layouts on load).
    _choice(c.model, "remat", "none", REMAT_POLICIES, "model.remat")
    c.model.scan = False
    # The towers' architecture details (pretrained CLIP: quick_gelu, 1e-5, proj_bias False;
    # SigLIP: gelu_tanh, 1e-6, the text projection with a bias).
    # MLP activation: gelu_tanh | gelu (exact) | quick_gelu
    _choice(c.model, "act", "gelu_tanh", tuple(ACTIVATIONS), "model.act")
    c.model.norm_eps = 1e-6         # LayerNorm epsilon of the towers
    c.model.proj_bias = False       # the embedding projections have a bias
    c.model.image = ml_collections.ConfigDict()
    c.model.image.patch_size = 4
    c.model.image.width = 128
    c.model.image.depth = 4
    c.model.image.heads = 4
    c.model.image.mlp_dim = 512
    _choice(c.model.image, "pool", "gap", ("gap", "cls", "map"), "model.image.pool")
    _choice(c.model.image, "posemb", "learn", ("learn", "sincos2d"), "model.image.posemb")
    # uint8 -> unit: [-1, 1] | clip | imagenet mean/std
    _choice(c.model.image, "pixel_norm", "unit", ("unit", "clip", "imagenet"),
            "model.image.pixel_norm")
    # Per-channel (r, g, b) on the [0, 1] scale replacing pixel_norm's (both or neither).
    c.model.image.pixel_mean = ()
    c.model.image.pixel_std = ()
    # The eval view, part of the model (launch.convert_weights writes the source's own; the
    # train view is data.crop): shortest (the short side to image_size / crop_fraction, then the
    # centre) | squash (the whole image to a square) | longest (the long side, then padding).
    # An eval set's own `resize` overrides it.
    _choice(c.model.image, "resize", "shortest", RESIZES, "model.image.resize")
    # The eval view's filter: PIL's, antialiased (as torchvision and Hugging Face apply them to
    # PIL images).
    _choice(c.model.image, "interpolation", "bilinear", tuple(INTERPOLATIONS),
            "model.image.interpolation")
    c.model.image.crop_fraction = 1.0   # shortest: the share of the resized short side kept
    # The centre crop's offset (d - n) / 2: round (torchvision, open_clip) | floor (Hugging Face)
    _choice(c.model.image, "crop_rounding", "round", CROP_ROUNDINGS, "model.image.crop_rounding")
    c.model.image.patch_bias = True     # the patch embedding has a bias (CLIP's has none)
    c.model.image.pre_norm = False      # LayerNorm before the blocks (CLIP's ln_pre)
    # FLIP: the share of each image's patches dropped in the train step (a uniform random subset
    # per example, new every step); evaluation always sees every patch.
    c.model.image.patch_dropout = 0.0
    c.model.text = ml_collections.ConfigDict()
    c.model.text.width = 128
    c.model.text.depth = 4
    c.model.text.heads = 4
    c.model.text.mlp_dim = 512
    c.model.text.causal = False
    # the true last token, found from the padding mask
    _choice(c.model.text, "pool", "last", ("last", "first", "mean"), "model.text.pool")
    # Text tokens attending to image tokens (ITM, MLM); its width is the text tower's.
    c.model.fusion = ml_collections.ConfigDict()
    c.model.fusion.depth = 2
    c.model.fusion.heads = 4
    c.model.fusion.mlp_dim = 512
    # The MAE decoder: visible patch tokens plus mask tokens -> pixels of every patch.
    c.model.mim_decoder = ml_collections.ConfigDict()
    c.model.mim_decoder.width = 64
    c.model.mim_decoder.depth = 1
    c.model.mim_decoder.heads = 4
    c.model.mim_decoder.mlp_dim = 256
    # The captioner: causal over the text tower's tokens, cross-attending the image tokens.
    c.model.caption_decoder = ml_collections.ConfigDict()
    c.model.caption_decoder.depth = 2
    c.model.caption_decoder.heads = 4
    c.model.caption_decoder.mlp_dim = 512

    # Objectives (vlm_jax/objectives/<section>.py): each is off while its weight is 0.
    c.contrastive = ml_collections.ConfigDict()     # CLIP (softmax) or SigLIP (sigmoid)
    _choice(c.contrastive, "name", "softmax", ("softmax", "sigmoid"), "contrastive.name")
    _choice(c.contrastive, "negatives", "global", ("local", "global"), "contrastive.negatives")
    # global negatives: gather (all-gather) | ring (ppermute)
    _choice(c.contrastive, "impl", "gather", ("gather", "ring"), "contrastive.impl")
    c.contrastive.softmax_scale_init = 1 / 0.07
    c.contrastive.softmax_scale_max = 100.0
    c.contrastive.sigmoid_t_init = 10.0
    c.contrastive.sigmoid_bias_init = -10.0
    objective(c.contrastive, weight=1.0)

    # The fusion encoder exists when ITM or MLM is on; the MIM decoder and the caption decoder
    # when their objective is.
    c.itm = ml_collections.ConfigDict()             # image-text matching, hard negatives
    objective(c.itm)
    # mined within the shard (local) or the whole batch (global)
    _choice(c.itm, "negatives", "global", ("local", "global"), "itm.negatives")
    # Which examples match each other's captions and so are never mined as negatives: the same
    # class label where the data has one (label; digits: one caption set per class), the very
    # same caption only (caption), or the same set of captions (scene: the pipeline's label is
    # then a hash of the example's captions; shapes, where many images show one scene and the
    # label is only the count).
    _choice(c.itm, "groups", "label", ("label", "caption", "scene"), "itm.groups")
    # Negatives are drawn with probability softmax(hardness * s * similarity) (s: the contrastive
    # scale): 1 is ALBEF's, 0 draws them uniformly (easy ones), larger values the hardest.
    c.itm.hardness = 1.0
    # Curriculum on it: ((percent of the run, factor), ...), as `schedule`; ((0, 0.), (30, 1.))
    # starts from easy negatives and reaches ALBEF's at 30% of the run.
    c.itm.hardness_schedule = ()
    # The share of images whose non-matching text is one of their record's negative captions
    # (false of the image by construction: attributes swapped between objects, the order
    # reversed; NegCLIP's text negatives) instead of a mined caption; images without any keep
    # the mined one. 0: mined only. Binding negatives are the hardest there are: ramp them in
    # (text_negatives_schedule, as hardness_schedule) once ITM has left its prior.
    c.itm.text_negatives = 0.0
    c.itm.text_negatives_schedule = ()
    c.mlm = ml_collections.ConfigDict()             # masked language modelling, image in context
    objective(c.mlm)
    c.mlm.rate = 0.15               # share of tokens chosen; of those 80% [MASK], 10% random, 10% kept
    c.mim = ml_collections.ConfigDict()             # masked image modelling (MAE)
    objective(c.mim)
    c.mim.ratio = 0.75              # share of patches hidden from the image tower
    c.mim.norm_pix = True           # targets: each patch normalised by its own mean and variance
    c.caption = ml_collections.ConfigDict()         # captioning (CoCa); needs model.text.causal
    objective(c.caption)
    # LocCa's grounding tasks on the records' regions, through the captioner (causal text tower
    # and caption decoder): referring expressions (a region's description -> its box) and
    # grounded captions (box -> description), boxes written as coordinate tokens past the
    # tokenizer's vocabulary; needs model.text.causal.
    c.grounding = ml_collections.ConfigDict()
    objective(c.grounding)
    c.grounding.bins = 32           # coordinate tokens: [0, 1] in this many equal bins
    # Masked prediction (TIPS): the student, with `ratio` of each image's patches replaced by a
    # mask token, predicts the EMA teacher's features of those patches; needs teacher.momentum.
    c.masked_prediction = ml_collections.ConfigDict()
    objective(c.masked_prediction)
    c.masked_prediction.ratio = 0.5
    # Self-distillation (SILC): the student's embedding of a local crop (a random resized crop of
    # `local_scale` of the image's area) pulled towards the EMA teacher's embedding of the
    # training view; needs teacher.momentum.
    c.distill = ml_collections.ConfigDict()
    objective(c.distill)
    c.distill.local_scale = (0.05, 0.4)
    # Balancing: each loss divided by the stop-gradient of its running mean (bias-corrected EMA),
    # so objectives of different scales pull with their weights, not their magnitudes.
    c.balance = ml_collections.ConfigDict()
    c.balance.enabled = False
    c.balance.decay = 0.99
    # An exponential moving average of the params, the teacher of self-distillation (SILC, TIPS):
    # teacher <- momentum * teacher + (1 - momentum) * params after each step from `start`
    # (a duration; before it the teacher is the params themselves). Sharded like the params,
    # checkpointed with them, never given gradients or optimizer slots. 0: no teacher.
    c.teacher = ml_collections.ConfigDict()
    c.teacher.momentum = 0.0
    _durations(c.teacher, "start")  # unset: step 0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.end_lr_ratio = 0.0      # cosine decays to lr * end_lr_ratio at the last step
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    # Adam's first moment; bfloat16 halves its memory
    _choice(c.optim, "mu_dtype", "float32", ("float32", "bfloat16"), "optim.mu_dtype")
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 1.0         # global-norm clipping; 0 disables
    _durations(c.optim, "warmup")   # unset: 50 steps
    # (regex over '/'-joined param paths, value); first match wins; every param must match.
    c.optim.wd_rules = ((".*/kernel$", 1.0), (".*", 0.0))
    c.optim.lr_rules = ((".*", 1.0),)
    c.optim.freeze_rules = ((".*", False),)

    c.eval = ml_collections.ConfigDict()
    c.eval.zeroshot = ("digits",)
    c.eval.retrieval = ("digits", "shapes")
    c.eval.batch_size = 256
    # Retrieval re-ranked by the ITM head (needs itm.weight > 0): each query's top k by
    # similarity reordered by the ITM score (metrics itm_i2t_r1, ...), by the ITM score plus
    # the similarity (BLIP's; itm_sim_i2t_r1, ...) and plus the similarity at the model's logit
    # scale (itm_itc_i2t_r1, ...)
    c.eval.itm_rerank = ()
    c.eval.rerank_k = 16
    c.eval.mlm = ()                 # MLM accuracy (needs mlm.weight > 0)
    # Linear probes on frozen image features, fit on each dataset's train split, scored on its
    # test split: a closed-form ridge classifier (linear_probe) and L2-regularised logistic
    # regression with C picked on a validation split (logistic_probe, the CLIP paper's protocol).
    c.eval.linear_probe = ()
    c.eval.logistic_probe = ()
    c.eval.probe_representation = "img/pre_logits"   # any image-tower output: img/embed, ...
    c.eval.probe_l2 = 1e-3          # ridge penalty per training example
    c.eval.probe_val_fraction = 0.2  # held out of the train split where a set has no val_split
    # Compositional accuracy on shapes (true caption against its attribute-swapped, reordered and
    # recounted versions), scored by ITC, ITM and caption likelihood where the model has them.
    c.eval.compositional = ()
    # caption_debiased divides a caption's likelihood by its mean over this many other test
    # images (the same for both captions of a pair); 32 is where the estimate stops moving.
    c.eval.marginal_images = 32
    # Referring-expression accuracy (IoU >= 0.5) on sets whose records have regions, beside the
    # train split's mean box (needs grounding.weight > 0).
    c.eval.refexp = ()
    # Linear classifiers on frozen patch tokens predicting each patch's object colour and kind
    # from the records' segmentation (the built-in shapes); ridge with eval.probe_l2.
    c.eval.dense_probe = ()
    # Eval sets beyond the built-in digits and shapes (which need no entry): name -> an
    # eval_dataset(...) section; the evaluators' lists above name them.
    c.eval.datasets = ml_collections.ConfigDict()
    # A suite file (configs/evals/NAME.py): its sets and evaluator lists are added to the ones
    # above; the sets that cannot be read are left out, with a warning.
    c.eval.suite = ""
    # Each evaluator's cadence (unset: eval_every; every evaluator also runs at the last step)
    # and its metric prefix ('{dataset}' stands for the dataset's name).
    for kind in EVALUATORS:
        evaluator(c.eval, kind)
    return c


def evaluator(section: ml_collections.ConfigDict, name: str) -> None:
    """An evaluator's cadence (unset: eval_every) and metric prefix, next to its datasets."""
    if name not in section:
        section[name] = ()
    _durations(section, f"{name}_every")
    section[f"{name}_prefix"] = "eval/{dataset}/"


# Config sections = modules of vlm_jax/objectives = metric prefixes, in the order they are summed.
OBJECTIVES = ("contrastive", "itm", "mlm", "mim", "caption", "grounding", "masked_prediction",
              "distill")
# Sections renamed since: old name -> new name (a config using the old one gets told).
RENAMED = {"loss": "contrastive"}
# Keys removed since -> where their job went (a config setting one is told; older workdirs'
# config.json files drop them).
REMOVED = {f"eval.{k}": "prompts and class names are per eval set now: "
                        "eval.datasets.NAME.templates and eval.datasets.NAME.class_names"
           for k in ("templates", "custom_templates", "class_names")}


def text_negatives(config) -> bool:
    """Whether batches carry a negative caption per example (neg_tokens, neg_mask, neg_valid)."""
    return config.itm.weight > 0 and config.itm.text_negatives > 0


def transform(config, src, key: str):
    """A transform setting as source `src` takes it: its own, or data.<key> where it has none."""
    return config.data[key] if src.get(key) is None else src[key]


def colourless(config) -> bool:
    """Whether batches mark the examples shown without their colours (`colourless`:
    data.grayscale, data.hue_shift)."""
    return any(d[k] is not None and d[k] > 0 for k in ("grayscale", "hue_shift")
               for d in (config.data, *config.data.sources.values()))


def grounding_bins(config) -> int:
    """The coordinate bins of the grounding objective; 0 when it is off."""
    return config.grounding.bins if config.grounding.weight > 0 else 0


def local_views(config) -> bool:
    """Whether batches carry a local crop per example (`local_image`, for distillation)."""
    return config.distill.weight > 0


def objective(section: ml_collections.ConfigDict, weight: float = 0.0) -> None:
    section.weight = weight         # w in sum_k w_k(step) * loss_k; 0 turns the objective off
    # Curriculum: ((percent of the run, factor), ...), the factor piecewise-linear in between and
    # constant outside, multiplying `weight`; () keeps it constant. ((0, 0.), (20, 1.)) ramps the
    # objective in over the first 20% of the steps; where the factor is 0 it is not computed.
    section.schedule = ()


def _entry(s: ml_collections.ConfigDict, values: dict, what: str) -> ml_collections.ConfigDict:
    for key, value in values.items():
        if key not in s:
            close = difflib.get_close_matches(key, list(s.keys()), n=1)
            raise ConfigError(f"unknown {what} key '{key}'" + (f"; did you mean '{close[0]}'?"
                                                              if close else ""))
        s[key] = value
    return s


EVAL_KINDS = ("builtin", "array_record", "tfds", "folder", "wds", "holdout")
# eval_dataset's `crop` before it became `resize`: old value -> new value.
EVAL_CROPS = {"center": "shortest", "resize": "squash"}


def eval_dataset(**values) -> ml_collections.ConfigDict:
    """One entry of `eval.datasets`: an eval set, where its prepared copy is and how to read it."""
    if "crop" in values:
        raise ConfigError("eval_dataset's 'crop' is now 'resize': " + ", ".join(
            f"crop={k!r} -> resize={v!r}" for k, v in EVAL_CROPS.items()))
    s = ml_collections.ConfigDict()
    # builtin | array_record (our shards) | tfds (prepared in array_record) | folder
    # (root/<class>/*.jpg, the ImageNet validation layout) | wds (CLIP_benchmark's WebDataset
    # layout: root/<split>/N.tar, classnames.txt, zeroshot_classification_templates.txt) |
    # holdout (path names a data.sources entry: the records its `holdout` keeps out of training)
    _choice(s, "kind", "array_record", EVAL_KINDS, "eval_dataset.kind")
    s.path = ""                     # as in source(); folder and wds: the root
    s.split = "test"                # the split scored (builtin, tfds)
    s.train_split = "train"         # the probes' training split
    s.val_split = ""                # logistic_probe picks C on it; "": held out of train_split
    s.image_key = "image"           # record/feature names; 'a/b' reads a nested feature
    s.caption_key = "captions"      # a string or strings per example; "" for none
    s.label_key = "label"           # an integer class; "" for none
    # Zero-shot class names: "" the dataset's own (built-in info, TFDS label names, folder
    # names); a shipped list (imagenet1k, cifar10, cifar100) or a file, one name per line.
    s.class_names = ""
    # Zero-shot prompts: "" the dataset's own (built-in) or else imagenet1k; a shipped set
    # (imagenet1k: CLIP's 80, cifar: CLIP's 18), a file of one template per line ('{}' or
    # '{c}' the class name) or a .json file: a list of templates, or {class name: [prompts]}.
    s.templates = ""
    # The eval view's resize mode for this set (shortest | squash | longest); None: the model's
    # (model.image.resize).
    s.resize = config_dict.placeholder(str)
    # Set from the source by kind='holdout': only the last share of the records is read.
    s.holdout = 0.0
    s.holdout_max = 0
    return _entry(s, values, "eval dataset")


def source(**values) -> ml_collections.ConfigDict:
    """One entry of `data.sources`: where the records are and how to read and transform them."""
    s = ml_collections.ConfigDict()
    # builtin | array_record | tfds
    _choice(s, "kind", "array_record", ("builtin", "array_record", "tfds"), "source.kind")
    # builtin: the dataset name; array_record: files, globs allowed, comma-separated;
    # tfds: a prepared dataset's folder (.../name/version), or its name under data_dir.
    s.path = ""
    s.split = "train"               # builtin and tfds
    s.weight = 1.0                  # mixture weight (normalised over sources)
    s.image_key = "image"           # tfds feature names
    s.caption_key = "captions"      # a string or a sequence of strings per example
    # Optional captions false of the image, for ITM's text negatives (itm.text_negatives).
    s.negative_caption_key = "negative_captions"
    # Optional boxes with descriptions, [{'box': [x0, y0, x1, y1] pixels, 'caption'}], for the
    # grounding objectives (vlm_jax/data/regions.py).
    s.region_key = "regions"
    # Captions that name no colour, for data.grayscale and data.hue_shift.
    s.gray_caption_key = "gray_captions"
    # None: take data.<same name>.
    s.crop = config_dict.placeholder(str)
    s.crop_scale_min = config_dict.placeholder(float)
    s.crop_padding = config_dict.placeholder(int)
    s.flip = config_dict.placeholder(bool)
    s.grayscale = config_dict.placeholder(float)
    s.hue_shift = config_dict.placeholder(float)
    s.hue_shift_degrees = config_dict.placeholder(tuple)
    # The share of the records kept out of training (the last ones, in file order: the end of
    # the last shards), at most holdout_max of them (0: no cap); eval_dataset(kind='holdout',
    # path=<this source's name>) scores them.
    s.holdout = 0.0
    s.holdout_max = 5000
    return _entry(s, values, "source")


def held_out(n: int, share: float, cap: int = 0) -> int:
    """How many of a source's n records its holdout share keeps out: ceil(share * n), at most
    cap (0: no cap)."""
    if share <= 0:
        return 0
    k = math.ceil(share * n)
    return min(k, cap) if cap else k


# Sections of user-named entries -> the function that makes one.
ENTRIES = {"data.sources": source, "eval.datasets": eval_dataset}


def _paths(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in c.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_paths(value, f"{prefix}{key}."))
    return out


def _type_ok(expected: type, value) -> bool:
    if value is None:
        return True
    if expected in (tuple, list):
        return isinstance(value, (tuple, list))
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _walk(cfg, schema, prefix: str, all_paths: list[str]) -> None:
    for key in cfg.keys():
        path = prefix + key
        if key not in schema and path in RENAMED:
            raise ConfigError(f"config section '{path}' is now '{RENAMED[path]}': rename "
                              f"{path}.KEY to {RENAMED[path]}.KEY (e.g. --config.{RENAMED[path]}"
                              f".name=sigmoid)")
        if key not in schema and path in REMOVED:
            raise ConfigError(f"config key '{path}' was removed: {REMOVED[path]}")
        if key not in schema:
            close = difflib.get_close_matches(path, all_paths, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}")
        value, expected = cfg[key], schema[key]
        if path in ENTRIES:
            make = ENTRIES[path]
            for name, src in value.items():
                if not isinstance(src, ml_collections.ConfigDict):
                    raise ConfigError(f"'{path}.{name}' must be a {make.__name__}(...) section")
                _walk(src, make(), f"{path}.{name}.", _paths(make(), f"{path}.{name}."))
                for k in src.keys():
                    where = f"{make.__name__}.{k}"
                    if where in CHOICES and src[k] is not None and src[k] not in CHOICES[where]:
                        raise ConfigError(f"'{path}.{name}.{k}' is {src[k]!r}; "
                                          f"choose one of {CHOICES[where]}")
                if not src.path:
                    raise ConfigError(f"'{path}.{name}.path' is empty")
                if make is not source:
                    if src.resize is not None and src.resize not in RESIZES:
                        raise ConfigError(f"'{path}.{name}.resize' is {src.resize!r}; "
                                          f"choose one of {RESIZES}")
                    continue
                if src.crop is not None and src.crop not in CROPS:
                    raise ConfigError(f"'data.sources.{name}.crop' is {src.crop!r}; "
                                      f"choose one of {CROPS}")
                if src.weight <= 0:
                    raise ConfigError(f"'data.sources.{name}.weight' must be positive")
            continue
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config key '{path}' must be a section, got {value!r}")
            _walk(value, expected, path + ".", all_paths)
            continue
        want = schema.get_type(key)
        if not _type_ok(want, value):
            raise ConfigError(f"config key '{path}' must be {want.__name__}, "
                              f"got {type(value).__name__} {value!r}")
        if path in CHOICES and value not in CHOICES[path]:
            raise ConfigError(f"config key '{path}' is {value!r}; choose one of {CHOICES[path]}")


def assign(cfg: ml_collections.ConfigDict, key: str, value) -> None:
    """cfg['a.b.c'] = value, for a dotted key."""
    section, leaf = _section(cfg, key)
    section[leaf] = value


def _section(cfg, name: str):
    *parents, leaf = name.split(".")
    for p in parents:
        cfg = cfg[p]
    return cfg, leaf


def _check_holdouts(cfg) -> None:
    for name, src in cfg.data.sources.items():
        if not 0 <= src.holdout < 1 or src.holdout_max < 0:
            raise ConfigError(f"'data.sources.{name}.holdout' is the share of its records kept "
                              f"out of training, in [0, 1), and holdout_max a count >= 0; got "
                              f"{src.holdout} and {src.holdout_max}")
    for name, entry in cfg.eval.datasets.items():
        if entry.kind != "holdout":
            continue
        src = cfg.data.sources.get(entry.path)
        if src is None:
            raise ConfigError(f"'eval.datasets.{name}' (kind holdout) names source "
                              f"{entry.path!r}, which is not in data.sources "
                              f"({', '.join(sorted(cfg.data.sources)) or 'empty'})")
        if not src.holdout:
            raise ConfigError(f"'eval.datasets.{name}' scores the held-out records of source "
                              f"{entry.path!r}, but 'data.sources.{entry.path}.holdout' is 0")


def validate(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict | None = None) -> None:
    """Raises ConfigError naming the first bad key; returns None when the config is sound."""
    schema = schema if schema is not None else defaults()
    _walk(cfg, schema, "", _paths(schema))
    for name in DURATIONS:
        section, leaf = _section(cfg, name)
        set_ = [f"{name}_{u}" for u in UNITS if section.get(f"{leaf}_{u}") is not None]
        if len(set_) > 1:
            raise ConfigError(f"duration '{name}' is given twice ({', '.join(set_)}); set one")
    if cfg.total_percent is not None:
        raise ConfigError("'total_percent' has no meaning; use total_steps|epochs|examples")
    _check_objectives(cfg)
    _check_mesh(cfg)
    _check_microbatches(cfg)
    i = cfg.model.image
    if len(i.pixel_mean) != len(i.pixel_std) or len(i.pixel_mean) not in (0, 3):
        raise ConfigError(f"'model.image.pixel_mean' and 'model.image.pixel_std' are 3 values "
                          f"each, or both empty; got {i.pixel_mean} and {i.pixel_std}")
    if any(v <= 0 for v in i.pixel_std):
        raise ConfigError(f"'model.image.pixel_std' must be positive, got {i.pixel_std}")
    if not 0 < i.crop_fraction <= 1:
        raise ConfigError(f"'model.image.crop_fraction' is the share kept, in (0, 1]; got "
                          f"{i.crop_fraction}")
    if not 0 <= cfg.model.image.patch_dropout < 1:
        raise ConfigError(f"'model.image.patch_dropout' is the share of patches dropped, in "
                          f"[0, 1); got {cfg.model.image.patch_dropout}")
    _check_colourless(cfg)
    _check_holdouts(cfg)
    if cfg.eval.marginal_images < 1:
        raise ConfigError(f"'eval.marginal_images' must be at least 1, got "
                          f"{cfg.eval.marginal_images}")
    if not 0 < cfg.eval.probe_val_fraction < 1:
        raise ConfigError(f"'eval.probe_val_fraction' must be in (0, 1), got "
                          f"{cfg.eval.probe_val_fraction}")
    for kind in EVALUATORS:
        try:
            cfg.eval[f"{kind}_prefix"].format(dataset="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"'eval.{kind}_prefix' may only hold '{{dataset}}', got "
                              f"{cfg.eval[f'{kind}_prefix']!r} ({e!r})") from None
        if len(cfg.eval[kind]) > 1 and "{dataset}" not in cfg.eval[f"{kind}_prefix"]:
            raise ConfigError(f"'eval.{kind}_prefix' needs '{{dataset}}': 'eval.{kind}' names "
                              f"{len(cfg.eval[kind])} datasets, whose metrics would collide")
    for key in ("batch_size", "tokenizer.max_len", "eval.batch_size"):
        section, leaf = _section(cfg, key)
        if section[leaf] <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {section[leaf]}")


def _check_colourless(cfg) -> None:
    """data.grayscale and data.hue_shift, data-wide and as each source takes them."""
    d = cfg.data
    sources = {f"data.sources.{k}.": v for k, v in d.sources.items()}
    for prefix, s in {"data.": d, **sources}.items():
        pick = functools.partial(transform, cfg, s)
        for key in ("grayscale", "hue_shift"):
            if not 0 <= pick(key) <= 1:
                raise ConfigError(f"'{prefix}{key}' is a share of examples in [0, 1], got "
                                  f"{pick(key)}")
        if pick("grayscale") + pick("hue_shift") > 1:
            raise ConfigError(f"'{prefix}grayscale' + '{prefix}hue_shift' is more than all "
                              f"the examples: {pick('grayscale')} + {pick('hue_shift')}")
        bands = pick("hue_shift_degrees")
        if not bands or any(len(b) != 2 or not b[0] <= b[1] for b in bands):
            raise ConfigError(f"'{prefix}hue_shift_degrees' is a list of [lo, hi] bands with lo "
                              f"<= hi, got {bands}")


def _check_microbatches(cfg) -> None:
    k = cfg.microbatches
    if k < 1 or cfg.batch_size % k:
        raise ConfigError(f"'microbatches' must be a positive divisor of batch_size "
                          f"{cfg.batch_size}, got {k}")
    if k > 1 and cfg.balance.enabled:
        raise ConfigError("'microbatches' > 1 does not support balance.enabled: the running "
                          "means need every loss of the step before any micro-batch's gradient")


def _check_mesh(cfg) -> None:
    from vlm_jax.parallel.sharding import check_strategy    # the steps live with their code
    m = cfg.mesh
    sizes = {a: m[a] for a in ("replica", "data", "fsdp", "tensor")}
    if any(v == 0 or v < -1 for v in sizes.values()) or list(sizes.values()).count(-1) > 1:
        raise ConfigError(f"mesh sizes must be positive, with at most one -1; got {sizes}")
    for i, rule in enumerate(m.param_rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[1], str)):
            raise ConfigError(f"'mesh.param_rules' #{i} must be (regex, strategy), got {rule!r}")
        try:
            check_strategy(rule[1], f"'mesh.param_rules' #{i}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if m.fsdp_min_mib < 0:
        raise ConfigError(f"'mesh.fsdp_min_mib' must be >= 0, got {m.fsdp_min_mib}")


def _check_schedule(points, key: str) -> None:
    ok = all(isinstance(p, (tuple, list)) and len(p) == 2
             and all(_type_ok(float, v) for v in p) for p in points)
    where = [p[0] for p in points] if ok else []
    if not ok or any(b < a for a, b in zip(where, where[1:])) or any(
            not 0 <= w <= 100 for w in where):
        raise ConfigError(f"'{key}' must be ((percent, factor), ...) with percents rising "
                          f"within [0, 100], got {points!r}")


def _check_objectives(cfg) -> None:
    if not any(cfg[name].weight > 0 for name in OBJECTIVES):
        raise ConfigError("every objective's weight is 0; set one of "
                          + ", ".join(f"{name}.weight" for name in OBJECTIVES))
    for name in OBJECTIVES:
        if cfg[name].weight < 0:
            raise ConfigError(f"'{name}.weight' must be >= 0, got {cfg[name].weight}")
        _check_schedule(cfg[name].schedule, f"{name}.schedule")
    _check_schedule(cfg.itm.hardness_schedule, "itm.hardness_schedule")
    _check_schedule(cfg.itm.text_negatives_schedule, "itm.text_negatives_schedule")
    if cfg.grounding.bins < 2:
        raise ConfigError(f"'grounding.bins' must be at least 2, got {cfg.grounding.bins}")
    if not 0 <= cfg.teacher.momentum < 1:
        raise ConfigError(f"'teacher.momentum' must be in [0, 1), got {cfg.teacher.momentum}")
    if not 0 <= cfg.itm.text_negatives <= 1:
        raise ConfigError(f"'itm.text_negatives' is a share in [0, 1], got {cfg.itm.text_negatives}")
    if cfg.itm.hardness < 0:
        raise ConfigError(f"'itm.hardness' must be >= 0, got {cfg.itm.hardness}")
    if not 0 <= cfg.balance.decay < 1:
        raise ConfigError(f"'balance.decay' must lie in [0, 1), got {cfg.balance.decay}")


def apply_duration_overrides(cfg: ml_collections.ConfigDict, overridden: Iterable[str]) -> None:
    """A duration set on the command line replaces the recipe's, whatever unit the recipe used."""
    for key in overridden:
        for name in DURATIONS:
            if any(key == f"{name}_{u}" for u in UNITS):
                section, leaf = _section(cfg, name)
                for u in UNITS:
                    if f"{name}_{u}" != key:
                        section[f"{leaf}_{u}"] = None


def unit(cfg: ml_collections.ConfigDict, name: str) -> str | None:
    """The unit duration `name` is given in (unset: its DURATIONS default's, or None)."""
    section, leaf = _section(cfg, name)
    given = [u for u in UNITS if section.get(f"{leaf}_{u}") is not None]
    if given:
        return given[0]
    return DURATIONS[name][0] if isinstance(DURATIONS.get(name), tuple) else None


def steps(cfg: ml_collections.ConfigDict, name: str, *, steps_per_epoch: float | None,
          total_steps: int | None = None) -> int | None:
    """Resolves duration `name` to a number of steps (unset: what DURATIONS says, or None).
    `steps_per_epoch` is None where no training data was read: a duration in epochs is then an
    error."""
    section, leaf = _section(cfg, name)
    batch = cfg.batch_size
    given = [(u, section.get(f"{leaf}_{u}")) for u in UNITS
             if section.get(f"{leaf}_{u}") is not None]
    if not given and isinstance(DURATIONS.get(name), tuple):
        given = [DURATIONS[name]]
    if not given and DURATIONS.get(name) == REQUIRED:
        raise ConfigError(f"duration '{name}' is not set; set one of "
                          f"{', '.join(f'{name}_{u}' for u in UNITS if u != 'percent')}")
    for unit, value in given:
        if unit == "steps":
            return int(value)
        if unit == "epochs":
            if steps_per_epoch is None:
                raise ConfigError(f"'{name}_epochs' needs the size of the training data, which "
                                  f"this command does not read; give it in steps or examples")
            return max(1, int(math.ceil(value * steps_per_epoch)))
        if unit == "examples":
            return max(1, int(math.ceil(value / batch)))
        if total_steps is None:
            raise ConfigError(f"'{name}_percent' needs the total number of steps")
        return max(1, int(round(value / 100 * total_steps)))
    return None


def from_json(text: str, where: str = "config.json") -> ml_collections.ConfigDict:
    """A config saved with `to_json_best_effort`, read back onto the schema and validated."""
    cfg = defaults()
    _update(cfg, json.loads(text), "", where)
    validate(cfg)
    return cfg


def _update(cfg, raw: dict, prefix: str, where: str) -> None:
    for key, value in raw.items():
        key = RENAMED.get(prefix + key, key) if not prefix else key   # older workdirs
        if prefix + key in ENTRIES:
            for name, entry in value.items():
                if prefix + key == "eval.datasets" and "crop" in entry:     # older workdirs
                    entry = {**entry, "resize": EVAL_CROPS.get(entry.pop("crop"))}
                cfg[key][name] = ENTRIES[prefix + key]()
                _update(cfg[key][name], entry, f"{prefix}{key}.{name}.", where)
            continue
        if prefix + key in REMOVED:
            continue
        if key not in cfg:
            raise ConfigError(f"unknown config key '{prefix}{key}' in {where}")
        if isinstance(value, dict) and isinstance(cfg[key], ml_collections.ConfigDict):
            _update(cfg[key], value, f"{prefix}{key}.", where)
        else:
            cfg[key] = _tuples(value)       # JSON has no tuples; the schema's sequences are


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
