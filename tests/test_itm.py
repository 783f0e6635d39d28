"""ITM: hard negatives drawn as specified (never the positive, ∝ softmax of the similarities),
global mining identical on 1, 2, 4 and 8 devices, local mining inside each shard, and the loss
against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mesh
from jax.sharding import NamedSharding, PartitionSpec as P

from vlm_jax.losses import itm


def _emb(b=16, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d)).astype(np.float32)
    y = x + 0.5 * rng.normal(size=(b, d)).astype(np.float32)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return unit(x), unit(y)


def _mine(n, negatives, zi, zt, seed=3, **keys):
    """Mined on n devices; `keys` (groups, views: [B]) sharded as the embeddings are."""
    mesh = make_mesh(n)
    sh = NamedSharding(mesh, P("data"))
    f = jax.jit(lambda a, b, ks: itm.mine_negatives(jax.random.key(seed), a, b, jnp.float32(5.0),
                                                    negatives=negatives, mesh=mesh, **ks))
    with jax.set_mesh(mesh):
        t, i = f(jax.device_put(zi, sh), jax.device_put(zt, sh),
                 {k: jax.device_put(v, sh) for k, v in keys.items()})
    return np.asarray(t), np.asarray(i)


def test_global_mining_is_the_same_on_any_device_count():
    zi, zt = _emb()
    want = itm.mine_negatives(jax.random.key(3), zi, zt, jnp.float32(5.0))
    for n in (1, 2, 4, 8):
        got = _mine(n, "global", zi, zt)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(np.asarray(w), g)


def test_examples_of_one_group_are_never_negatives():
    """Two images with the same caption: neither is the other's negative, on any device count."""
    zi, zt = _emb()
    groups = np.arange(16) // 2                       # pairs share a caption
    want = itm.mine_negatives(jax.random.key(3), zi, zt, jnp.float32(5.0), groups=groups)
    for w in want:
        assert (np.asarray(w) // 2 != np.arange(16) // 2).all()
    for w, g in zip(want, _mine(4, "global", zi, zt, groups=groups)):
        np.testing.assert_array_equal(np.asarray(w), g)


def test_local_mining_stays_in_the_shard():
    zi, zt = _emb()
    t, i = _mine(4, "local", zi, zt)
    shard = np.arange(16) // 4
    assert (t // 4 == shard).all() and (i // 4 == shard).all()
    assert (t != np.arange(16)).all() and (i != np.arange(16)).all()


def test_draws_follow_the_softmax_without_the_positive():
    zi, zt = _emb(b=6)
    draw = jax.jit(jax.vmap(lambda k: itm.mine_negatives(k, zi, zt, jnp.float32(4.0))[0]))
    picks = np.asarray(draw(jax.random.split(jax.random.key(0), 20000)))    # [draws, B]
    logits = 4.0 * zi @ zt.T
    np.fill_diagonal(logits, -np.inf)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    freq = np.stack([np.bincount(picks[:, r], minlength=6) for r in range(6)]) / len(picks)
    assert (np.diag(freq) == 0).all()
    np.testing.assert_allclose(freq, p, atol=0.015)


def test_itm_loss_matches_numpy():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(5, 2)).astype(np.float32) for _ in range(3))
    loss, m = itm.itm_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c))
    logits = np.concatenate([a, b, c])
    labels = np.array([1] * 5 + [0] * 10)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert float(loss) == pytest.approx(-logp[np.arange(15), labels].mean(), rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())
    own = np.array([True, False, True, True, False])      # own negative captions: b rows 0, 2, 3
    _, m = itm.itm_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c), jnp.asarray(own))
    assert float(m["own_accuracy"]) == pytest.approx((b[own].argmax(1) == 0).mean())
    assert float(m["own_share"]) == pytest.approx(0.6)


@pytest.mark.parametrize("n", [2, 8])
def test_rows_taken_around_the_ring_are_the_plain_take(n):
    """rows.take (the negatives' tokens, one shard's block at a time) against x[index]: values,
    a boolean array alongside, and the gradient (the cotangents sent back around the ring); the
    compiled program gathers no whole-batch array, and the backward pass keeps indices only."""
    from vlm_jax.parallel import rows
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 4)).astype(np.float32)
    m = rng.random((16, 3)) > 0.5
    index = rng.integers(0, 16, 16).astype(np.int32)
    mesh = make_mesh(n)
    sh = NamedSharding(mesh, P("data"))
    loss = lambda x, m, take: (take(x, m) ** 2 * jnp.arange(16.0)[:, None, None]).sum()
    plain = lambda x, m: jnp.where(m[index][..., None], x[index], 0.0)
    want, want_g = jax.value_and_grad(loss)(x, m, plain)

    def ring(x, m):
        a, b = rows.take((x, m), jnp.asarray(index), mesh=mesh)
        return jnp.where(b[..., None], a, 0.0)
    f = jax.jit(jax.value_and_grad(loss), static_argnums=2)
    args = jax.device_put((x, m), sh)
    got, g = f(*args, ring)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=1e-6)
    assert "all-gather" not in f.lower(*args, ring).compile().as_text()
    # The backward pass keeps the indices only: no block-sized array per hop (a select's
    # broadcast predicate kept at every hop was 6 GiB per chip at 256 shards).
    _, back = jax.vjp(lambda x: rows.take((x,), jnp.asarray(index), mesh=mesh)[0], args[0])
    assert all(r.dtype == jnp.int32 and r.size <= 16 * n for r in jax.tree.leaves(back))
    # Local indices (each names a row of its own shard) need no communication.
    own = np.arange(16) // (16 // n) * (16 // n) + rng.integers(0, 16 // n, 16)
    got = jax.jit(lambda x: rows.take((x,), jnp.asarray(own), mesh=mesh, local=True)[0])(args[0])
    np.testing.assert_array_equal(got, x[own])


def test_scene_groups_label_examples_by_their_caption_set():
    from vlm_jax.data.tokenizer import ByteTokenizer
    from vlm_jax.data.transforms import Augment
    image = np.zeros((8, 8, 3), np.uint8)
    ex = lambda caps, label=2: {"image": image, "captions": caps, "label": label, "where": "x"}
    scene = Augment(ByteTokenizer(), 16, 8, scene_label=True)
    rng = np.random.default_rng(0)
    a = scene(ex(["a red circle", "one red circle"]), rng)["label"]
    b = scene(ex(["one red circle", "a red circle"], 0), rng)["label"]    # the same set
    c = scene(ex(["a red circle"]), rng)["label"]                          # another set
    assert a == b != c and min(a, c) >= 0
    assert Augment(ByteTokenizer(), 16, 8)(ex(["a red circle"]), rng)["label"] == 2


def test_hardness_follows_its_schedule_over_the_run():
    from vlm_jax import config as config_lib
    from vlm_jax.objectives.itm import Objective
    c = config_lib.defaults()
    c.itm.hardness, c.itm.hardness_schedule = 2.0, ((0, 0.0), (50, 1.0))
    obj = Objective.from_config(c)
    assert [float(obj.hardness_at(p)) for p in (0.0, 25.0, 50.0, 90.0)] == [0.0, 1.0, 2.0, 2.0]
    assert float(Objective.from_config(config_lib.defaults()).hardness_at(10.0)) == 1.0
    c.itm.hardness_schedule = ((50, 1.0), (10, 0.0))
    with pytest.raises(config_lib.ConfigError, match="itm.hardness_schedule"):
        config_lib.validate(c)
    c = config_lib.defaults()
    c.itm.text_negatives, c.itm.text_negatives_schedule = 0.5, ((20, 0.0), (60, 1.0))
    assert [float(Objective.from_config(c).text_negatives_at(p)) for p in (10.0, 40.0, 80.0)] == \
        [0.0, 0.25, 0.5]
    c.itm.text_negatives = 1.5
    with pytest.raises(config_lib.ConfigError, match="itm.text_negatives"):
        config_lib.validate(c)


def test_pipeline_draws_each_example_one_of_its_negative_captions(data_dir):
    """The shapes pipeline with `itm.text_negatives`: each example's negative is one of its own
    scene's negative captions (the scene found from the positive caption), neg_valid False
    exactly where the scene has none."""
    import grain
    from conftest import tiny_config

    from configs import shapes as recipe
    from vlm_jax.data import builtin, pipeline, records
    from vlm_jax.data.builtin import shapes
    from vlm_jax.data.tokenizer import build, tokenize
    cfg = tiny_config(data_dir, recipe.get_config("albef"), **{
        "itm.text_negatives": 0.5, "batch_size": 64})
    tok = build(cfg)
    batch = next(iter(pipeline.train_dataset(cfg, tok)[0]))
    from vlm_jax.setup import Setup
    assert set(pipeline.split_skips(batch)[0]) == set(Setup(cfg, tokenizer=tok).batch_keys)
    ds = grain.sources.ArrayRecordDataSource([builtin.split_path("shapes", "train", data_dir)])
    key = lambda texts: [tuple(r) for r in tokenize(tok, texts, cfg.tokenizer.max_len)[0]]
    scenes = [[tuple(o) for o in records.unpack(ds[i], i)["objects"]] for i in range(len(ds))]
    scene_of = dict(zip(key([c for s in scenes for c in shapes.describe(s)]),
                        [s for s in scenes for _ in range(3)]))
    valid = batch["neg_valid"]
    assert 0 < valid.sum() < len(valid)
    for ids, neg, v in zip(batch["tokens"], batch["neg_tokens"], valid):
        negatives = shapes.negative_captions(scene_of[tuple(ids)])
        assert v == bool(negatives)
        if v:
            assert tuple(neg) in key(negatives)


def test_examples_of_different_views_are_never_negatives():
    """A grayscale example's caption may be true of a coloured image: no negative crosses views,
    on any device count."""
    zi, zt = _emb()
    views = np.arange(16) % 2
    want = itm.mine_negatives(jax.random.key(3), zi, zt, jnp.float32(5.0), views=views)
    for w in want:
        assert (np.asarray(w) % 2 == views).all() and (np.asarray(w) != np.arange(16)).all()
    for w, g in zip(want, _mine(4, "global", zi, zt, views=views)):
        np.testing.assert_array_equal(np.asarray(w), g)


def test_colourless_views_show_no_named_colour_and_name_none(data_dir):
    """data.grayscale and data.hue_shift on shapes: the marked examples are gray (the luma of the
    coloured view the same draws give) or turned in hue by an angle of the recipe's bands, their
    caption is one of their scene's colourless ones, their scene label is that set's, and they
    take no negative caption; the batch holds what the step expects."""
    from conftest import tiny_config

    from configs import shapes as recipe
    from vlm_jax.data import images, pipeline
    from vlm_jax.data.builtin import shapes
    from vlm_jax.data.sources import BadRecordError
    from vlm_jax.data.tokenizer import build, tokenize
    from vlm_jax.data.transforms import Augment
    from vlm_jax.setup import Setup
    cfg = tiny_config(data_dir, recipe.get_config("albef"), **{
        "itm.text_negatives": 0.5, "batch_size": 64, "data.grayscale": 0.3,
        "data.hue_shift": 0.3})
    tok = build(cfg)
    batch = pipeline.split_skips(next(iter(pipeline.train_dataset(cfg, tok)[0])))[0]
    assert set(batch) == set(Setup(cfg, tokenizer=tok).batch_keys)
    plain, img = batch["colourless"], batch["image"].astype(int)
    gray = (img == img[..., :1]).all(axis=(1, 2, 3))
    assert (gray <= plain).all() and 0 < gray.sum() < plain.sum() < len(plain)
    colours = [i for w in shapes.COLORS for i in tok.encode(w)]      # a word, an id
    assert len(colours) == len(shapes.COLORS)
    has_colour = np.isin(batch["tokens"], colours).any(axis=1)
    assert (has_colour == ~plain).all()
    assert not batch["neg_valid"][plain].any() and batch["neg_valid"][~plain].any()

    scene = [("red", "circle"), ("blue", "triangle")]
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :20] = shapes.COLORS["red"]
    image[:, 40:] = shapes.COLORS["blue"]
    ex = {"image": image, "captions": shapes.describe(scene), "label": 1, "where": "record #7 of x",
          "gray_captions": shapes.describe(scene, colours=False),
          "negative_captions": shapes.negative_captions(scene)}
    args = (tok, cfg.tokenizer.max_len, 32)
    gray_ids = [tuple(r) for r in tokenize(tok, ex["gray_captions"], cfg.tokenizer.max_len)[0]]
    plain = Augment(*args, mark_colourless=True, negatives=True)(ex, np.random.default_rng(5))
    other = Augment(*args, scene_label=True)(ex, np.random.default_rng(5))
    bands = shapes.hue_shifts()
    turns = [d for lo, hi in bands for d in np.arange(lo, hi + 1)]
    for kw, recoloured in ((dict(grayscale=1.0), lambda x: [images.grayscale(x)]),
                           (dict(hue_shift=1.0, hue_degrees=bands),
                            lambda x: [images.rotate_hue(x, d) for d in turns])):
        out = Augment(*args, **kw, mark_colourless=True, negatives=True, scene_label=True)(
            ex, np.random.default_rng(5))
        assert any((out["image"] == x).all() for x in recoloured(plain["image"])), kw
        assert out["colourless"] and not plain["colourless"]
        assert not out["neg_valid"] and plain["neg_valid"]
        assert tuple(out["tokens"]) in gray_ids and out["label"] != other["label"]
        with pytest.raises(BadRecordError, match=r"gray_captions.*record #7 of x"):
            Augment(*args, **kw)({**ex, "gray_captions": []}, np.random.default_rng(5))


def test_hue_turns_keep_named_colours_and_held_out_pairs_away():
    """Each angle of shapes.hue_shifts() turns every colour a kind is seen in, as
    images.rotate_hue renders it, at least ~margin away from each named hue and nearest to one
    its kind is seen in; angles between the bands do not. White stays white."""
    import colorsys

    from vlm_jax.data import images
    from vlm_jax.data.builtin import shapes
    named = {c: shapes.hue(c) for c in shapes.COLORS if shapes.hue(c) is not None}
    seen = [(c, k) for c in named for k in shapes.KINDS if (c, k) not in shapes.HELD_OUT]
    pixels = np.array([[shapes.COLORS[c] for c, _ in seen] + [shapes.COLORS["white"]]], np.uint8)

    def worst(turn):        # the least gap to a named hue; whether a turned object is held out
        out = images.rotate_hue(pixels, turn)[0]
        assert (out[-1] == shapes.COLORS["white"]).all()
        hues = [colorsys.rgb_to_hsv(*(p / 255))[0] * 360 for p in out[:-1]]
        gaps = [{n: abs((h - a + 180) % 360 - 180) for n, a in named.items()} for h in hues]
        held = any((min(g, key=g.get), k) in shapes.HELD_OUT for g, (_, k) in zip(gaps, seen))
        return min(min(g.values()) for g in gaps), held

    bands = shapes.hue_shifts(15.0)
    assert bands == ((-24.0, -17.0), (17.0, 35.0))
    for lo, hi in bands:
        for turn in np.arange(lo, hi + 0.01, 0.5):
            gap, held = worst(turn)
            assert gap > 14.5 and not held, turn
    assert all(worst(t)[1] or worst(t)[0] < 15 for t in (-60, -40, 0, 10, 45, 90, 120, 180))


def test_colour_shares_and_hue_bands_are_checked():
    from PIL import Image

    from vlm_jax import config as config_lib
    from vlm_jax.data import images
    x = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    got = images.grayscale(x)
    want = np.asarray(Image.fromarray(x).convert("L"), int)
    assert got.shape == x.shape and np.abs(got[..., 0].astype(int) - want).max() <= 1
    c = config_lib.defaults()
    assert not config_lib.colourless(c)
    for key, value, match in (("grayscale", 1.5, "'data.grayscale'"),
                              ("hue_shift", -0.1, "'data.hue_shift'"),
                              ("hue_shift_degrees", ((10, 5),), "'data.hue_shift_degrees'"),
                              ("hue_shift_degrees", (), "'data.hue_shift_degrees'")):
        c.data[key] = value
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.validate(c)
        c = config_lib.defaults()
    c.data.sources.web = config_lib.source(path="x.array_record", grayscale=0.2)
    assert config_lib.colourless(c)
    c.data.sources.web.grayscale = -0.1
    with pytest.raises(config_lib.ConfigError, match="data.sources.web.grayscale"):
        config_lib.validate(c)
    c.data.sources.web.grayscale, c.data.hue_shift = 0.6, 0.5
    with pytest.raises(config_lib.ConfigError, match="data.sources.web.grayscale' \\+ "):
        config_lib.validate(c)
