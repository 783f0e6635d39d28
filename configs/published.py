"""Published image-text setups at their own scale: model, resolution, text length, vocabulary,
loss and global batch as their papers and model cards give them.

  python -m launch.compile --config configs/published.py:siglip-b16-256 --topology v6e-16
  python -m launch.train --config configs/published.py:clip-l14-224:'/data/*.array_record' \\
      --config.tokenizer.path=/models/clip/tokenizer.json --workdir W

The argument is NAME, or NAME:SHARDS for training (the shards: files or globs, comma-separated).
NAME+flip and NAME+clipa are the first stage of the faster two-stage recipes at this scale (the
settings of configs/flip.py's and configs/clipa.py's first stages: half the patches dropped;
half the image size and 16 tokens; each until 90% of the run, since towers this large adapt to
every patch and the full grid quickly); NAME+siglip2 is the whole run with SigLIP 2's losses
(configs/siglip2.py; its shards need `regions`), which at this batch needs far more memory per
chip than NAME (siglip-b16-256+siglip2 on v5e-256: --config.microbatches=8; docs/BENCHMARKS.md,
and `launch.compile` for any slice). The
second stage of a two-stage recipe is plain NAME resuming the first:

  python -m launch.train --config configs/published.py:siglip-b16-256+flip:SHARDS --workdir W1
  python -m launch.train --config configs/published.py:siglip-b16-256:SHARDS \\
      --config.resume=W1 --workdir W2

NAME:
  siglip-b16-256        SigLIP B/16 @256: sigmoid loss, 64 tokens, 32k sentencepiece vocabulary
  siglip-so400m14-384   SigLIP So400m/14 @384: the shape-optimised 400M image and text towers
  clip-l14-224          CLIP L/14 @224: softmax loss, 77 causal tokens, 49,408 BPE vocabulary
All at a global batch of 32,768, bfloat16, scanned and rematerialised blocks, the ring for the
global negatives. The tokenizer file and the shards are the run's to give; `launch.compile`
needs neither (it stands in `tokenizer.vocab_size` ids and reads no data).
"""
from configs import clipa, flip, siglip2, web
from vlm_jax import config as config_lib

# name -> image (patch, width, depth, heads, mlp), text (width, depth, heads, mlp), image size,
# text length, embedding width, vocabulary, loss.
SETUPS = {
    "siglip-b16-256": ((16, 768, 12, 12, 3072), (768, 12, 12, 3072), 256, 64, 768, 32_000,
                       "sigmoid"),
    # @384 as published: 14-pixel patches tile 378 of its 384 pixels (27 x 27 patches; the
    # published patch convolution drops the rest), so the images are 378 here.
    "siglip-so400m14-384": ((14, 1152, 27, 16, 4304), (1152, 27, 16, 4304), 378, 64, 1152,
                            32_000, "sigmoid"),
    "clip-l14-224": ((14, 1024, 24, 16, 4096), (768, 12, 12, 3072), 224, 77, 768, 49_408,
                     "softmax"),
}


def _clipa_first(c):
    clipa.low(c)
    c.stop_at_percent = 90      # CLIPA-v2 trains ~95% of its samples at low resolution


# NAME+STAGE: the first stage of a two-stage recipe, set on top of NAME.
FIRST_STAGES = {"flip": flip.masked, "clipa": _clipa_first}
# NAME+RECIPE: a whole run with a recipe's losses on top of NAME (its shards need `regions`).
RECIPES = {"siglip2": siglip2.add}


def get_config(arg: str | None = None):
    name, _, shards = (arg or "").partition(":")
    name, _, stage = name.partition("+")
    if name not in SETUPS:
        raise ValueError(f"configs/published.py needs a name: one of {', '.join(SETUPS)}")
    if stage and stage not in FIRST_STAGES and stage not in RECIPES:
        raise ValueError(f"configs/published.py: no first stage or recipe {stage!r} (NAME+STAGE, "
                         f"STAGE one of {', '.join([*FIRST_STAGES, *RECIPES])})")
    (patch, iw, idepth, iheads, imlp), (tw, tdepth, theads, tmlp), size, length, embed, vocab, \
        loss = SETUPS[name]
    c = config_lib.defaults()
    # Compiling reads no data; training without the shards stops at this path, named.
    # Its last 1% of records (at most 5,000) held out of training and scored for retrieval.
    web.held_out(c, config_lib.source(path=shards or f"give configs/published.py:{name}:SHARDS"))
    c.data.image_size = size
    c.data.crop, c.data.crop_scale_min, c.data.crop_padding = "random_resized", 0.9, 0
    c.data.num_workers, c.data.num_threads, c.data.prefetch = 8, 8, 4
    c.tokenizer.name = "sentencepiece" if loss == "sigmoid" else "hf"
    c.tokenizer.vocab_size, c.tokenizer.max_len = vocab, length
    c.tokenizer.bos = loss == "softmax"          # CLIP's texts start with a BOS; SigLIP's do not
    c.batch_size = 32_768
    c.total_steps = 100_000
    c.optim.warmup_steps = 5_000
    c.optim.lr, c.optim.weight_decay = 1e-3, 1e-4
    c.model.embed_dim, c.model.dtype = embed, "bfloat16"
    c.model.scan, c.model.remat = True, "dots_with_no_batch_dims_saveable"
    i, t = c.model.image, c.model.text
    i.patch_size, i.width, i.depth, i.heads, i.mlp_dim = patch, iw, idepth, iheads, imlp
    t.width, t.depth, t.heads, t.mlp_dim = tw, tdepth, theads, tmlp
    c.contrastive.name, c.contrastive.impl = loss, "ring"
    if loss == "sigmoid":                         # the paper's t = 10 (t' = log 10), b = -10
        i.pool = "map"
        c.contrastive.sigmoid_t_init, c.contrastive.sigmoid_bias_init = 10.0, -10.0
    else:                                         # CLIP: class token, causal text, ln_pre
        i.pool, i.patch_bias, i.pre_norm = "cls", False, True
        t.causal = True
    c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 1000, 5000
    if stage:
        {**FIRST_STAGES, **RECIPES}[stage](c)
    return c
