"""CLIP ViT-B/16 on web image-text shards (converted with `python -m launch.convert`).

  python -m launch.train --config configs/web.py:'/data/cc3m_ar/*.array_record' --workdir workdirs/cc3m

The argument is the shards (files or globs, comma-separated). Sized for an accelerator: set
--config.batch_size and --config.mesh.* for yours. The last 1% of the records (at most 5,000,
the end of the last shards) are kept out of training and scored for retrieval as `web_holdout`;
the ranges go to WORKDIR/holdout.json. --config.eval.suite=configs/evals/standard.py adds that
suite's sets (those found) to every evaluation.
"""
from vlm_jax import config as config_lib


def get_config(arg: str | None = None):
    if not arg:
        raise ValueError("configs/web.py needs the shards: configs/web.py:'/path/*.array_record'")
    c = config_lib.defaults()
    held_out(c, config_lib.source(path=arg))
    c.data.image_size = 224
    c.data.crop = "random_resized"
    c.data.crop_scale_min = 0.9     # web captions describe the whole image: crop lightly
    c.data.crop_padding = 0
    c.data.flip = False             # captions name left and right
    c.data.num_workers = 8
    c.data.num_threads = 8
    c.data.prefetch = 4
    c.tokenizer.max_len = 64
    c.batch_size = 4096
    c.total_epochs = 32.0
    c.optim.warmup_percent = 5.0
    c.optim.lr = 5e-4
    c.optim.weight_decay = 0.2
    c.model.embed_dim = 512
    c.model.image.patch_size, c.model.image.width, c.model.image.depth = 16, 768, 12
    c.model.image.heads, c.model.image.mlp_dim = 12, 3072
    c.model.text.width, c.model.text.depth, c.model.text.heads, c.model.text.mlp_dim = 512, 12, 8, 2048
    c.model.text.causal = True
    c.model.dtype = "bfloat16"
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 2000
    return c


def held_out(c, source, share: float = 0.01, cap: int = 5000) -> None:
    """`source` as the run's only data ('web'), its last `share` of records (at most `cap`)
    kept out of training and evaluated by retrieval: the run's own evaluation, no built-in set."""
    source.holdout, source.holdout_max = share, cap
    c.data.sources.web = source
    c.eval.datasets.web_holdout = config_lib.eval_dataset(kind="holdout", path="web")
    c.eval.zeroshot, c.eval.retrieval = (), ("web_holdout",)
