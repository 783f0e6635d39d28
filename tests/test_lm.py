"""The decoder-only LM against transformers: tiny random Llama, Qwen2, Gemma and Gemma 2 models
built from a config here, converted from their safetensors, give the same per-token logits on
right- and left-padded batches."""
import numpy as np
import pytest

from vlm_jax.interop import lm as lm_interop
from vlm_jax.models import lm

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              max_position_embeddings=64, pad_token_id=0)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500.0, rope_scaling=dict(
        rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0)),
}


def _hf_model(name, path):
    import torch
    import transformers
    config_cls, model_cls, extra = ARCHS[name]
    cfg = getattr(transformers, config_cls)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                # norms and biases away from their ones and zeros
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    model.config._attn_implementation = "eager"
    return model.eval()


def _batch(seed=0):
    """Token ids [3, 12] and their real-token mask: lengths 12, 7 and 3."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 97, (3, 12))
    mask = np.arange(12)[None] < np.array([12, 7, 3])[:, None]
    return np.where(mask, ids, 0), mask


@pytest.mark.parametrize("name", list(ARCHS))
def test_converted_lm_logits_match_transformers(name, tmp_path):
    import jax
    import jax.numpy as jnp
    import torch
    hf = _hf_model(name, tmp_path)
    config, params = lm_interop.convert(str(tmp_path))
    model = lm.LM(config)
    apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
    ids, mask = _batch()
    for side in ("right", "left"):
        if side == "left":       # the same texts at the end of each row
            ids = np.stack([np.roll(r, 12 - m.sum()) for r, m in zip(ids, mask)])
            mask = np.stack([np.roll(m, 12 - m.sum()) for m in mask])
        positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
        ours = np.asarray(apply(params, jnp.asarray(ids), jnp.asarray(mask)))
        with torch.no_grad():
            want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long(),
                      position_ids=torch.from_numpy(positions)).logits.numpy()
        np.testing.assert_allclose(ours[mask], want[mask], atol=1e-4, rtol=1e-4, err_msg=side)
        np.testing.assert_array_equal(ours[mask].argmax(-1), want[mask].argmax(-1))
    # Scanned layers: the same model, params stacked on a leading `layers` axis.
    scanned = lm.LM(lm.LMConfig(**{**config.__dict__, "scan": True}))
    blocks = [params.pop(f"block{i}") for i in range(config.depth)]
    params["blocks"] = jax.tree.map(lambda *x: np.stack(x), *blocks)
    got = np.asarray(jax.jit(lambda p, *a: scanned.apply({"params": p}, *a))(
        params, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], ours[mask], atol=1e-5)
    if name == "gemma2":    # written and read back as launch.convert_weights writes it
        _, fresh = lm_interop.convert(str(tmp_path))
        lm_interop.save(str(tmp_path / "ours"), config, fresh, str(tmp_path))
        back_config, back = lm_interop.load(str(tmp_path / "ours"))
        assert back_config == config and lm_interop.is_lm_folder(str(tmp_path))
        assert (tmp_path / "ours" / "tokenizer.json").exists() == (
            tmp_path / "tokenizer.json").exists()
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(fresh)):
            np.testing.assert_array_equal(a, b)
    if name == "llama":     # a sharded copy (an index and shards) converts to the same params
        import os
        hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
        assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
        assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
        _, again = lm_interop.convert(str(tmp_path / "sharded"))
        for (path, a), (_, b) in zip(*(jax.tree_util.tree_flatten_with_path(t)[0]
                                       for t in (again, lm_interop.convert(str(tmp_path))[1]))):
            np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_prefix_mask_and_refusals(tmp_path):
    import json
    # Prefix-LM: the first three tokens see each other, the rest causally.
    m = np.asarray(lm.attention_mask(np.ones((1, 5), bool), np.array([[0, 0, 0, 1, 1]])))[0, 0]
    np.testing.assert_array_equal(m, [[1, 1, 1, 0, 0]] * 3 + [[1, 1, 1, 1, 0], [1] * 5])
    cfg = {**COMMON, "architectures": ["MistralForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture 'MistralForCausalLM' does not convert"):
        lm_interop.convert(str(tmp_path))
    with pytest.raises(ValueError, match="rope type 'yarn' does not convert"):
        lm_interop.lm_config({**COMMON, "architectures": ["LlamaForCausalLM"],
                              "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_greedy_generation_equals_transformers_and_the_uncached_forward(name, tmp_path):
    import jax
    import jax.numpy as jnp
    import torch

    from vlm_jax import generate
    hf = _hf_model(name, tmp_path)
    config, params = lm_interop.convert(str(tmp_path))
    model = lm.LM(config)
    ids, mask = _batch(1)                     # right-padded prompts of 12, 7 and 3 tokens
    left = np.stack([np.roll(r, 12 - m.sum()) for r, m in zip(ids, mask)])
    left_mask = np.stack([np.roll(m, 12 - m.sum()) for m in mask])
    n = 32
    got = generate.generate(model, params, left, left_mask, n)
    with torch.no_grad():
        want = hf.generate(input_ids=torch.from_numpy(left),
                           attention_mask=torch.from_numpy(left_mask).long(), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0).numpy()[:, 12:]
    np.testing.assert_array_equal(got, want)
    # Right-padded prompts give the same tokens.
    np.testing.assert_array_equal(generate.generate(model, params, ids, mask, n), got)
    # Each step's cached logits are the uncached forward pass's over prompt + generated tokens.
    logits, cache = generate.prefill(model, params, jnp.asarray(left), jnp.asarray(left_mask),
                                     12 + n)
    steps = [logits]
    for t in range(n - 1):
        logits, cache = generate.extend(model, params, jnp.asarray(got[:, t]), cache)
        steps.append(logits)
    full = model.apply({"params": params}, jnp.asarray(np.concatenate([left, got], 1)),
                       jnp.asarray(np.concatenate([left_mask, np.ones_like(got, bool)], 1)))
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full)[:, 11:11 + n], atol=1e-5)


def test_sampling_keeps_only_the_allowed_tokens():
    import jax
    import jax.numpy as jnp

    from vlm_jax.generate import Sampling, choose
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.key(0)
    draw = lambda s: np.asarray(choose(logits, keys, s))
    assert set(draw(Sampling(1.0, top_k=1))) == {0}
    assert set(draw(Sampling(1.0, top_p=0.7))) == {0, 1}          # 0.5 + 0.3 reach 0.7
    assert set(draw(Sampling(1.0, top_k=3))) == {0, 1, 2}
    counts = np.bincount(draw(Sampling(1.0)), minlength=4) / 2000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)
    assert set(draw(Sampling())) == {0}                            # greedy


def test_beam_search_equals_transformers(tmp_path):
    import torch

    from vlm_jax import generate
    hf = _hf_model("llama", tmp_path)
    config, params = lm_interop.convert(str(tmp_path))
    ids, mask = _batch(2)
    left = np.stack([np.roll(r, 12 - m.sum()) for r, m in zip(ids, mask)])
    left_mask = np.stack([np.roll(m, 12 - m.sum()) for m in mask])
    got = generate.beam_search(lm.LM(config), params, left, left_mask, 8, beams=3)
    hf.generation_config.eos_token_id = None         # no beam ends early
    with torch.no_grad():
        want = hf.generate(input_ids=torch.from_numpy(left),
                           attention_mask=torch.from_numpy(left_mask).long(), max_new_tokens=8,
                           num_beams=3, do_sample=False, early_stopping=False,
                           pad_token_id=0).numpy()[:, 12:]
    np.testing.assert_array_equal(got, want)
    # Not the greedy answer everywhere: the beams matter on this case.
    assert not np.array_equal(got, generate.generate(lm.LM(config), params, left, left_mask, 8))


def test_lora_trains_only_its_adapters_and_merges_into_the_base():
    import jax
    import jax.numpy as jnp
    import optax

    from vlm_jax import lora
    from vlm_jax.losses.next_token import next_token_loss
    config = lm.LMConfig(vocab_size=97, width=32, depth=2, heads=4, kv_heads=2, head_dim=8,
                         mlp_dim=48)
    model = lm.LM(config)
    ids, mask = (jnp.asarray(x) for x in _batch(3))
    base = model.init(jax.random.key(0), ids, mask)["params"]
    rules = ((r"block\d+/attn/(q|v)", 4), (r"block1/mlp/down", 2))
    adapters = lora.init(model, base, rules, jax.random.key(1), ids, mask)
    assert sorted(adapters) == ["block0/attn/q", "block0/attn/v", "block1/attn/q",
                                "block1/attn/v", "block1/mlp/down"]
    assert adapters["block0/attn/q"]["a"].shape == (32, 4)
    assert adapters["block1/mlp/down"]["b"].shape == (2, 32)

    def loss(ad):
        return next_token_loss(lora.apply(model, base, ad, 8.0, ids, mask), ids, mask)[0]
    tx = optax.adam(5e-2)
    state = tx.init(adapters)
    # The optimizer holds moments for the adapters only: none for the frozen base.
    shapes = lambda t: sorted(x.shape for x in jax.tree.leaves(t))
    assert shapes(state[0].mu) == shapes(adapters) and shapes(state[0].nu) == shapes(adapters)

    @jax.jit
    def step(ad, state):
        value, grad = jax.value_and_grad(loss)(ad)
        updates, state = tx.update(grad, state)
        return optax.apply_updates(ad, updates), state, value
    before = jax.tree.map(np.array, base)
    first = None
    for _ in range(20):
        adapters, state, value = step(adapters, state)
        first = value if first is None else first
    assert value < first - 0.1, (first, value)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    merged = lora.merge(base, adapters, 8.0)
    np.testing.assert_allclose(model.apply({"params": merged}, ids, mask),
                               lora.apply(model, base, adapters, 8.0, ids, mask), atol=1e-5)
    with pytest.raises(ValueError, match="choose no dense layer"):
        lora.init(model, base, ((r"nothing", 4),), jax.random.key(1), ids, mask)


def test_generation_on_8_devices_gives_the_same_tokens():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from vlm_jax import generate
    config = lm.LMConfig(vocab_size=97, width=32, depth=2, heads=4, kv_heads=2, head_dim=8,
                         mlp_dim=48, sliding_window=3)
    model = lm.LM(config)
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 97, (8, 6))
    mask = np.arange(6)[None] < rng.integers(2, 7, (8, 1))
    params = model.init(jax.random.key(0), ids, mask)["params"]
    one = generate.generate(model, params, ids, mask, 12,
                            sampling=generate.Sampling(temperature=1.0, top_k=20))
    rows = NamedSharding(Mesh(np.array(jax.devices()[:8]), ("data",)), P("data"))
    eight = generate.generate(model, params, ids, mask, 12, batch_sharding=rows,
                              sampling=generate.Sampling(temperature=1.0, top_k=20))
    np.testing.assert_array_equal(one, eight)
    _, cache = generate.prefill(model, params, jax.device_put(ids, rows),
                                jax.device_put(mask, rows), 18, rows)
    assert cache["k"].sharding.spec[1] == "data" and len(cache["k"].sharding.device_set) == 8


def test_next_token_loss_counts_the_chosen_tokens_per_token_or_per_example():
    import jax

    from vlm_jax.losses.next_token import next_token_loss
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, (3, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0], [0] * 6], bool)   # row 3: none
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1], -1))
    nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    w = mask[:, 1:]
    loss, m = next_token_loss(logits, tokens, mask)
    assert float(loss) == pytest.approx(nll[w].mean(), rel=1e-6) and float(m["tokens"]) == 7
    loss, _ = next_token_loss(logits, tokens, mask, "example")
    assert float(loss) == pytest.approx(np.mean([nll[0].mean(), nll[1][w[1]].mean()]), rel=1e-6)
    with pytest.raises(ValueError, match="normalisation 'sum'"):
        next_token_loss(logits, tokens, mask, "sum")


def test_sharded_by_the_mesh_rules_the_lm_gives_the_single_device_loss_and_gradients():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from vlm_jax import config as config_lib
    from vlm_jax.losses.next_token import next_token_loss
    from vlm_jax.parallel import mesh as mesh_lib, sharding
    c = lm.LMConfig(vocab_size=96, width=32, depth=2, heads=4, kv_heads=2, head_dim=8,
                    mlp_dim=64, scan=True, remat="nothing_saveable")
    model = lm.LM(c)
    ids, mask = (jnp.asarray(x) for x in _batch(4))
    ids, mask = jnp.tile(ids, (4, 1))[:8], jnp.tile(mask, (4, 1))[:8]
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask))["params"]
    params = nn.unbox(model.init(jax.random.key(0), ids, mask)["params"])
    loss = lambda p, i, m: next_token_loss(model.apply({"params": p}, i, m), i, m)[0]
    want = jax.jit(jax.value_and_grad(loss))(params, ids, mask)
    cfg = config_lib.defaults()
    rules = sharding.logical_rules(cfg)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
    specs = sharding.param_specs(boxed, mesh, rules, cfg.mesh.param_rules)
    placed = jax.tree.map(lambda x, s: jax.device_put(x, jax.NamedSharding(mesh, s)), params,
                          specs)
    assert specs["blocks"]["attn"]["q"]["kernel"] == jax.P(None, "fsdp", "tensor")
    assert specs["embed"]["embedding"][0] == "tensor"          # the vocabulary split
    rows = jax.NamedSharding(mesh, jax.P(("replica", "data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        got = jax.jit(jax.value_and_grad(loss))(placed, jax.device_put(ids, rows),
                                                jax.device_put(mask, rows))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
