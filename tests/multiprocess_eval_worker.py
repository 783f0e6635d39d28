"""One of two processes joined by jax.distributed: embeds the digits test split through the eval
pipeline (each process reading its own rows) and checks the result against embedding the whole
split in memory. Run by tests/test_sources.py."""
import sys

import jax

pid, port, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

from helpers import make_mesh, tiny_config  # noqa: E402
from vlm_jax import models  # noqa: E402
from vlm_jax.data import pipeline  # noqa: E402
from vlm_jax.data.tokenizer import ByteTokenizer  # noqa: E402
from vlm_jax.evals.common import Embedder  # noqa: E402
from vlm_jax.parallel import sharding  # noqa: E402

cfg = tiny_config(data_dir)
model = models.build(cfg, ByteTokenizer.vocab_size)
mesh = make_mesh(4)
rules = sharding.logical_rules(cfg)
s, L = cfg.data.image_size, cfg.tokenizer.max_len
params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, s, s, 3), np.uint8),
                             np.zeros((1, L), np.int32), np.ones((1, L), bool))["params"]
embed = Embedder(model, mesh, rules, ByteTokenizer(), L, 48)   # 360 = 7 x 48 + 24: padded
batches, n = pipeline.eval_batches(pipeline.builtin_source("digits"), data_dir, s, embed.batch)
rows = sum(len(b["index"]) for b in pipeline.eval_batches(
    pipeline.builtin_source("digits"), data_dir, s, embed.batch)[0])
got = embed.images_from(params, batches, n)["img/normed"]
want = embed.images(params, pipeline.load_split("digits", "test", data_dir, s)["image"])
assert got.shape == want.shape == (360, cfg.model.embed_dim), got.shape
np.testing.assert_allclose(got, want, atol=1e-5)
print(f"OK process {pid}: {rows} local rows of {n}")
