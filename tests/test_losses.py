"""Contrastive losses: sharded (1, 2, 4, 8 devices) == a plain single-device reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mesh

from vlm_jax.losses.contrastive import contrastive_loss

B, D = 32, 16


def _normed(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def ref_softmax(zi, zt, s):
    logits = s * zi @ zt.T
    ce_rows = -jnp.diag(jax.nn.log_softmax(logits, axis=1))
    ce_cols = -jnp.diag(jax.nn.log_softmax(logits, axis=0))
    return 0.5 * (ce_rows.mean() + ce_cols.mean())


def ref_sigmoid(zi, zt, t, b):
    logits = t * zi @ zt.T + b
    z = 2 * jnp.eye(zi.shape[0]) - 1
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / zi.shape[0]


def reference(kind, negatives, n_shards, zi, zt, s, b):
    """Global: the whole B x B matrix. Local: the mean of each shard's own block loss."""
    fn = (lambda a, c: ref_softmax(a, c, s)) if kind == "softmax" else (
        lambda a, c: ref_sigmoid(a, c, s, b))
    if negatives == "global":
        return fn(zi, zt)
    chunks = zip(jnp.split(zi, n_shards), jnp.split(zt, n_shards))
    return jnp.mean(jnp.stack([fn(a, c) for a, c in chunks]))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    # Raw embeddings; the loss sees them normalised, so gradients also cover the normalisation.
    xi = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    xt = jnp.asarray(xi + 0.8 * rng.normal(size=(B, D)), jnp.float32)
    return xi, xt, jnp.float32(7.0), jnp.float32(-3.0)


VARIANTS = [("local", "gather"), ("global", "gather"), ("global", "ring")]


@pytest.mark.parametrize("n_dev", [1, 2, 4, 8])
@pytest.mark.parametrize("negatives,impl", VARIANTS)
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_sharded_loss_and_grads_match_reference(kind, negatives, impl, n_dev):
    xi, xt, s, b = _inputs()
    mesh = make_mesh(n_dev)

    def ours(xi, xt, s, b):
        return contrastive_loss(kind, _normed(xi), _normed(xt), s, b, negatives=negatives,
                                impl=impl, mesh=mesh, batch_axes=("data",))[0]

    def ref(xi, xt, s, b):
        return reference(kind, negatives, n_dev, _normed(xi), _normed(xt), s, b)

    got, got_g = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2, 3)))(xi, xt, s, b)
    want, want_g = jax.value_and_grad(ref, argnums=(0, 1, 2, 3))(xi, xt, s, b)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, g, w in zip(("img", "txt", "scale", "bias"), got_g, want_g):
        if kind == "softmax" and name == "bias":
            continue
        # float32 tolerance: relative 1e-5 of the gradient's scale.
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()),
                                   err_msg=name)
        assert np.abs(np.asarray(w)).max() > 0, name   # the reference gradient is not trivially 0


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_ring_and_gather_log_the_same_metrics(kind):
    xi, xt, s, b = _inputs(3)
    zi, zt = _normed(xi), _normed(xt)
    zt = zt.at[5].set(zt[4])            # a duplicate caption: a tie both impls must score alike
    mesh = make_mesh(4)
    run = jax.jit(lambda impl: contrastive_loss(kind, zi, zt, s, b, impl=impl, mesh=mesh),
                  static_argnums=0)
    (l_g, m_g), (l_r, m_r) = run("gather"), run("ring")
    np.testing.assert_allclose(l_r, l_g, rtol=1e-5)
    assert set(m_g) == set(m_r)
    for k in m_g:
        np.testing.assert_allclose(m_r[k], m_g[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_local_and_global_differ_when_sharded():
    xi, xt, s, b = _inputs()
    mesh = make_mesh(4)
    loss = jax.jit(lambda neg: contrastive_loss("softmax", _normed(xi), _normed(xt), s,
                                                negatives=neg, mesh=mesh)[0], static_argnums=0)
    loc, glo = loss("local"), loss("global")
    assert float(glo) > float(loc) + 1e-3   # more negatives, a harder problem


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_metrics_on_a_perfect_batch(kind):
    z = _normed(jnp.eye(B, D) + 0.0) if D >= B else _normed(jnp.asarray(
        np.random.default_rng(1).normal(size=(B, D)), jnp.float32))
    mesh = make_mesh(4)
    loss, m = jax.jit(lambda z: contrastive_loss(kind, z, z, jnp.float32(50.0), jnp.float32(-5.0),
                                                 mesh=mesh))(z)
    assert float(m["i2t_acc"]) == 1.0 and float(m["t2i_acc"]) == 1.0
    np.testing.assert_allclose(m["pos_logit"], 50.0 + (-5.0 if kind == "sigmoid" else 0), rtol=1e-5)
    assert float(m["neg_logit"]) < float(m["pos_logit"])
    assert np.isfinite(float(loss))


def test_rejects_bad_arguments():
    xi, xt, s, b = _inputs()
    with pytest.raises(ValueError, match="unknown contrastive loss"):
        contrastive_loss("hinge", xi, xt, s)
    with pytest.raises(ValueError, match="negatives"):
        contrastive_loss("softmax", xi, xt, s, negatives="all")
    with pytest.raises(ValueError, match="unknown contrastive impl"):
        contrastive_loss("softmax", xi, xt, s, impl="allreduce")
    with pytest.raises(ValueError, match="not divisible"):
        contrastive_loss("softmax", xi[:30], xt[:30], s, mesh=make_mesh(8))


@pytest.mark.parametrize("impl", ["gather", "ring"])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_global_batches_to_a_million_trace(kind, impl):
    """Global batches of 2^16 and 2^20 (the SigLIP paper's largest) on 8 devices: the loss and
    its gradient trace (B^2 pairs overflow an int32; nothing here is executed)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = make_mesh(8)
    for n in (1 << 16, 1 << 20):
        z = jax.ShapeDtypeStruct((n, 4), jnp.float32, sharding=NamedSharding(mesh, P("data")))
        loss = lambda zi, zt, s: contrastive_loss(kind, zi, zt, s, s, mesh=mesh, impl=impl)[0]
        value, grads = jax.eval_shape(jax.value_and_grad(loss, argnums=(0, 1, 2)), z, z,
                                      jax.ShapeDtypeStruct((), jnp.float32))
        assert value.shape == () and grads[0].shape == grads[1].shape == (n, 4)


@pytest.mark.parametrize("negatives", ["global", "local"])
def test_pair_counts_past_int32_are_exact(negatives):
    """The metrics' denominators at B = 2^20 on 8 shards: B^2 - B negative pairs (global), or
    B * b - B (local)."""
    from vlm_jax.losses import contrastive
    b, shards = 1 << 17, 8
    n = b * shards
    sums = {"i2t_correct": jnp.int32(n // 2), "t2i_correct": jnp.int32(n // 4),
            "pos_sum": jnp.float32(3.0 * n), "neg_sum": jnp.float32(-1e12)}
    loss, m = contrastive._finish(jnp.float32(7.0 * n), sums, b, shards, negatives, None, {})
    pairs = n * (n if negatives == "global" else b) - n
    assert float(loss) == pytest.approx(7.0) and float(m["pos_logit"]) == pytest.approx(3.0)
    assert float(m["i2t_acc"]) == 0.5 and float(m["t2i_acc"]) == 0.25
    assert float(m["neg_logit"]) == pytest.approx(-1e12 / pairs, rel=1e-6)
