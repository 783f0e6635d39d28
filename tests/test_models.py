"""Model outputs by name, shapes, and the text padding mask."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from helpers import random_params

from vlm_jax import models, objectives
from vlm_jax.data.tokenizer import ByteTokenizer, tokenize
from vlm_jax.models.vit import ViT


def _model(**kw):
    cfg = tiny_config("/unused", **kw)
    return models.build(cfg, ByteTokenizer.vocab_size, objectives.heads(cfg)), cfg


def _init(model, cfg, n=3, shapes_only=False, real=False):
    """Params and a small batch. The params are random values of the model's shapes (the tests
    compare computations: no init program to compile), the model's own init when `real`, or
    only their shapes."""
    s, L = cfg.data.image_size, cfg.tokenizer.max_len
    img = jnp.asarray(np.random.default_rng(0).integers(0, 255, (n, s, s, 3)), jnp.uint8)
    ids, mask = tokenize(ByteTokenizer(), ["a photo of a two.", "seven", "handwritten 3"][:n], L)
    if real:
        return jax.jit(model.init)(jax.random.key(0), img, ids, mask)["params"], img, ids, mask
    params = jax.eval_shape(model.init, jax.random.key(0), img, ids, mask)["params"]
    return (params if shapes_only else random_params(params)), img, ids, mask


# The multi-objective model of the MAE and captioner tests.
_GENERATIVE = {"mim.weight": 1.0, "caption.weight": 1.0, "model.text.causal": True,
               "model.image.patch_size": 4}


def test_output_names_and_shapes():
    model, cfg = _model()
    params, img, ids, mask = _init(model, cfg, real=True)          # the initial scale, below
    out = jax.jit(model.apply)({"params": params}, img, ids, mask)
    d = cfg.model.embed_dim
    assert out["img/embed"].shape == (3, d) and out["txt/embed"].shape == (3, d)
    assert out["img/tokens"].shape == (3, 4, 32)          # (16 / 8)^2 patches, width 32
    assert out["txt/tokens"].shape == (3, cfg.tokenizer.max_len, 32)
    assert "img/encoder/block0" in out and "txt/pre_logits" in out
    np.testing.assert_allclose(np.linalg.norm(out["img/normed"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["scale"], 1 / 0.07, rtol=1e-5)


def test_padding_does_not_change_text_embedding():
    model, cfg = _model()                   # max_len 24
    params, img, _, _ = _init(model, cfg)
    texts = ["a photo of a two.", "seven", "handwritten 3"]
    ids_short, mask_short = tokenize(ByteTokenizer(), texts, 19)
    ids_long, mask_long = tokenize(ByteTokenizer(), texts, 24)
    ids_long[~mask_long] = 77       # garbage in padded slots must not matter either
    enc = jax.jit(lambda i, m: model.apply({"params": params}, i, m,
                                           method=model.encode_text)["txt/embed"])
    np.testing.assert_allclose(enc(ids_short, mask_short), enc(ids_long, mask_long), atol=1e-5)
    # ... while the content of a real token does.
    changed = ids_long.copy()
    changed[1, 2] += 1
    assert np.abs(enc(changed, mask_long)[1] - enc(ids_long, mask_long)[1]).max() > 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_pooling_reads_the_true_last_token(causal):
    model, cfg = _model(**{"model.text.causal": causal})
    params, *_ = _init(model, cfg)
    ids, mask = tokenize(ByteTokenizer(), ["two", "two"], cfg.tokenizer.max_len)
    mask[1, 5] = True      # declare one more token real: the pooled (last) token moves
    ids[1, 5] = ids[1, 4]
    out = jax.jit(lambda i, m: model.apply({"params": params}, i, m, method=model.encode_text))(
        ids, mask)
    assert np.abs(out["txt/embed"][0] - out["txt/embed"][1]).max() > 1e-4


@pytest.mark.parametrize("pool,posemb", [("gap", "learn"), ("cls", "sincos2d"), ("map", "learn")])
def test_vit_variants(pool, posemb):
    vit = ViT(patch_size=4, width=32, depth=1, heads=2, mlp_dim=64, pool=pool, posemb=posemb)
    x = jnp.zeros((2, 16, 16, 3))
    out, _ = jax.jit(vit.init_with_output)(jax.random.key(0), x)
    assert out["pre_logits"].shape == (2, 32)
    assert out["tokens"].shape == (2, 16 + (pool == "cls"), 32)


def test_every_param_has_logical_axes():
    model, cfg = _model()
    s, L = cfg.data.image_size, cfg.tokenizer.max_len
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, 3), jnp.uint8),
                           jnp.zeros((1, L), jnp.int32), jnp.ones((1, L), bool))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == len(x.value.shape)


def test_attention_init_uses_the_true_fans():
    from vlm_jax.models.transformer import Attention
    d, h = 128, 4
    params = jax.jit(Attention(h).init)(jax.random.key(0), jnp.zeros((1, 2, d)))["params"]
    params = nn_unbox(params)
    want = np.sqrt(2 / (d + d))     # xavier for the d x d map that q and out really are
    for name in ("q", "out"):
        assert abs(np.std(params[name]["kernel"]) / want - 1) < 0.05, name


def nn_unbox(tree):
    return nn.unbox(tree)


@pytest.mark.parametrize("norm, mean, std", [
    ("unit", 0.5, 0.5), ("clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
def test_pixel_normalisation_on_device(norm, mean, std):
    model, cfg = _model(**{"model.image.pixel_norm": norm})
    params, img, _, _ = _init(model, cfg)
    enc = jax.jit(lambda x: model.apply({"params": params}, x, method=model.encode_image)[
        "img/normed"])
    want = (np.asarray(img, np.float32) / 255 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(enc(img), enc(jnp.asarray(want, jnp.float32)), atol=1e-5)


def test_fusion_encoder_and_heads():
    from vlm_jax.models.fusion import FusionEncoder, ItmHead, VocabHead
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.normal(size=(2, 6, 32)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    image = jnp.asarray(rng.normal(size=(2, 5, 48)), jnp.float32)     # another width
    enc = FusionEncoder(depth=2, heads=4, mlp_dim=64)
    shapes = lambda module, *x: jax.eval_shape(module.init, jax.random.key(0), *x)["params"]
    params = nn.unbox(random_params(shapes(enc, text, mask, image)))
    apply = jax.jit(lambda *a: enc.apply({"params": params}, *a))   # one program, not op by op
    out = apply(text, mask, image)
    assert out["tokens"].shape == (2, 6, 32) and out["cls"].shape == (2, 32)
    assert params["block0"]["xattn"]["k"]["kernel"].shape == (48, 4, 8)
    # Padding is invisible to the real tokens; the image is not.
    noisy = text.at[0, 3:].set(99.0)
    again = apply(noisy, mask, image)["tokens"]
    np.testing.assert_allclose(again[0, :3], out["tokens"][0, :3], atol=1e-5)
    other = apply(text, mask, image[::-1])["tokens"]
    assert np.abs(np.asarray(other - out["tokens"])).max() > 1e-3
    itm = ItmHead()
    logits = itm.apply({"params": random_params(shapes(itm, out["cls"]))}, out["cls"])
    assert logits.shape == (2, 2) and logits.dtype == jnp.float32
    # As initialised, the head passes the ITM loss's gradient back to the fusion encoder.
    head = itm.init(jax.random.key(0), out["cls"])
    grad = jax.grad(lambda c: -jax.nn.log_softmax(itm.apply(head, c))[:, 1].sum())(out["cls"])
    assert (np.linalg.norm(np.asarray(grad), axis=1) > 1e-3).all()
    mlm = VocabHead(vocab_size=260)
    mlm_params = random_params(shapes(mlm, out["tokens"]))
    assert mlm.apply({"params": mlm_params}, out["tokens"]).shape == (2, 6, 260)


def test_objective_heads_exist_only_when_their_objective_is_on():
    model, cfg = _model()
    assert set(_init(model, cfg, shapes_only=True)[0]) == {
        "img", "txt", "img_proj", "txt_proj", "scale"}
    model, cfg = _model(**{"itm.weight": 1.0, "mim.weight": 1.0, "caption.weight": 1.0,
                           "model.text.causal": True})
    assert set(_init(model, cfg, shapes_only=True)[0]) == {
        "img", "txt", "img_proj", "txt_proj", "scale", "fusion", "itm_head", "mim_decoder",
        "caption_decoder", "caption_head"}


def test_mae_encoder_sees_only_visible_patches():
    model, cfg = _model(**_GENERATIVE)                                       # 16 patches
    params, img, ids, mask = _init(model, cfg)
    apply = jax.jit(lambda *a, method: model.apply({"params": nn.unbox(params)}, *a,
                                                   method=method), static_argnames="method")
    visible = jnp.asarray([[0, 5, 9, 15]] * 3)
    pred = apply(img, visible, method="mim_pixels")
    assert pred.shape == (3, 16, 4 * 4 * 3)
    # Hidden patches change nothing; a visible one does.
    in_visible = img.at[:, 4:8, 4:8].set(0)          # patch 5: rows 4-7, cols 4-7
    in_hidden = img.at[:, 0:4, 4:8].set(0)           # patch 1
    np.testing.assert_allclose(apply(in_hidden, visible, method="mim_pixels"), pred, atol=1e-5)
    assert np.abs(np.asarray(apply(in_visible, visible, method="mim_pixels") - pred)).max() > 1e-4
    # All patches visible: the same tower tokens as the plain encoder.
    full = jnp.broadcast_to(jnp.arange(16), (3, 16))
    tokens = apply(img, method="encode_image")["img/tokens"]
    vit = ViT(4, 32, 1, 2, 64)
    got = jax.jit(lambda p, x, keep: vit.apply({"params": p}, x, keep)["tokens"])(
        nn.unbox(params)["img"], models.vlm.pixels(img), full)
    np.testing.assert_allclose(got, tokens, atol=1e-5)


def test_captioner_is_causal():
    """Logits at position t do not depend on tokens after t (nor on padding)."""
    model, cfg = _model(**_GENERATIVE)
    params, img, ids, mask = _init(model, cfg)
    params = nn.unbox(params)

    @jax.jit
    def logits(tokens):
        out = model.apply({"params": params}, img, tokens, mask)
        return model.apply({"params": params}, out["txt/tokens"], mask, out["img/tokens"],
                           method="caption_logits")
    base = logits(ids)
    later = jnp.asarray(ids).at[:, 4:].set(7)
    np.testing.assert_allclose(logits(later)[:, :4], base[:, :4], atol=1e-5)
    assert np.abs(np.asarray(logits(later)[:, 4:] - base[:, 4:])).max() > 1e-4


def _tower_loss(model, x):
    def f(params):
        out = model.apply({"params": params}, *x)
        return (out["img/normed"] * out["txt/normed"]).sum() + out["img/tokens"].mean()
    return jax.jit(jax.value_and_grad(f))


def test_scanned_and_rematerialised_blocks_compute_the_looped_model():
    """Scanned blocks, each sub-layer rematerialised apart (and the final LayerNorms and the
    attention-pooling head with them), against the looped model in one pass."""
    from vlm_jax.models import layout
    arch = {"model.image.depth": 3, "model.text.depth": 2, "model.text.causal": True,
            "model.image.pool": "map"}
    looped, cfg = _model(**arch)
    params, *x = _init(looped, cfg)
    params = nn.unbox(params)
    want_v, want_g = _tower_loss(looped, x)(params)
    scanned, _ = _model(**arch, **{"model.scan": True, "model.remat": "sublayers"})
    own, *_ = _init(scanned, cfg, shapes_only=True)
    stacked = layout.to_scanned(jax.device_get(params))
    assert jax.tree.map(np.shape, nn.unbox(own)) == jax.tree.map(np.shape, stacked)
    v, g = _tower_loss(scanned, x)(stacked)
    np.testing.assert_allclose(v, want_v, rtol=1e-6)
    g = layout.to_looped(jax.device_get(g))
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_g))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)
    # The scanned params carry the 'layers' logical axis first.
    names = nn.get_partition_spec(own)["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert tuple(names) == ("layers", "embed", "mlp")


def test_remat_lowers_the_memory_of_the_backward_pass():
    """XLA:CPU merges a looped remat's recomputation back into the forward pass, so the saving
    is measured on scanned blocks (as used at scale)."""
    def temp_bytes(remat):
        model, cfg = _model(**{"model.image.depth": 3, "model.remat": remat, "model.scan": True,
                               "model.image.mlp_dim": 256, "data.image_size": 32,
                               "model.image.patch_size": 4})
        params, *_ = _init(model, cfg, shapes_only=True)
        img = jnp.zeros((32, 32, 32, 3), jnp.uint8)
        ids, mask = jnp.zeros((32, 24), jnp.int32), jnp.ones((32, 24), bool)
        f = _tower_loss(model, (img, ids, mask))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("nothing_saveable") < 0.5 * temp_bytes("none")
