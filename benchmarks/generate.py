"""Cached decoding: `vlm_jax.generate` against transformers' `generate` on the same converted
model, prompts and length, greedy, in one run.

A random Llama-architecture model (built from a config here, saved, converted) decodes
`--new` tokens after `--batch` prompts of `--prompt` tokens, each side timed after a warm-up
run (ours compiles its prefill and extend programs there), best of `--repeats`. Both sides
decode `--new` tokens whatever they emit (no EOS). The tokens are checked equal.

  python benchmarks/generate.py                    # a table
  python benchmarks/generate.py --json             # {"ours_tok_s", "transformers_tok_s", "ratio", ...}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(folder: str, width: int, depth: int, vocab: int):
    import torch
    import transformers
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=depth, num_attention_heads=width // 64, num_key_value_heads=max(
            1, width // 256), max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    model.generation_config.eos_token_id = None
    return model


def _best(fn, repeats: int) -> tuple[float, object]:
    fn()                                    # warm-up (compiles ours)
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    import jax
    import torch

    from vlm_jax import generate
    from vlm_jax.interop import lm as lm_interop
    from vlm_jax.models import lm
    with tempfile.TemporaryDirectory() as folder:
        hf = _model(folder, a.width, a.depth, a.vocab)
        config, params = lm_interop.convert(folder)
    model = lm.LM(config)
    params = jax.device_put(params)
    ids = np.random.default_rng(0).integers(1, a.vocab, (a.batch, a.prompt))
    mask = np.ones_like(ids, bool)
    ours_s, ours = _best(lambda: generate.generate(model, params, ids, mask, a.new), a.repeats)

    def theirs():
        with torch.no_grad():
            return hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(
                ids.shape, dtype=torch.long), max_new_tokens=a.new, min_new_tokens=a.new,
                do_sample=False, pad_token_id=0).numpy()[:, a.prompt:]
    theirs_s, want = _best(theirs, a.repeats)
    tokens = a.batch * a.new
    out = {"ours_tok_s": tokens / ours_s, "transformers_tok_s": tokens / theirs_s,
           "ratio": theirs_s / ours_s, "same_tokens": bool(np.array_equal(ours, want)),
           "batch": a.batch, "prompt": a.prompt, "new": a.new, "width": a.width,
           "depth": a.depth, "vocab": a.vocab, "torch_threads": torch.get_num_threads(),
           "device": jax.devices()[0].device_kind}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.batch} x {a.new} tokens after {a.prompt}-token prompts, Llama width "
              f"{a.width} depth {a.depth} vocab {a.vocab} on {out['device']}")
        print(f"  vlm_jax.generate      {out['ours_tok_s']:9.1f} tok/s")
        print(f"  transformers.generate {out['transformers_tok_s']:9.1f} tok/s")
        print(f"  ratio {out['ratio']:.2f}x, same tokens: {out['same_tokens']}")
    return out


if __name__ == "__main__":
    main()
