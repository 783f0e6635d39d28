"""MLM and MIM: masking statistics on large samples, losses against plain numpy, and the same
masks whether the batch is sharded over 1 or 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mesh
from jax.sharding import NamedSharding, PartitionSpec as P

from vlm_jax.losses import masked

VOCAB, MASK, BOS, EOS = 260, 3, 1, 2


def _tokens(n=4096, length=64, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(5, length + 1, n)
    tokens = rng.integers(4, VOCAB, (n, length)).astype(np.int32)
    mask = np.arange(length)[None] < lens[:, None]
    tokens[:, 0] = BOS
    tokens[np.arange(n), lens - 1] = EOS
    tokens[~mask] = 0
    return tokens, mask


def test_mlm_masking_statistics():
    tokens, mask = _tokens()
    inputs, chosen = masked.mlm_mask(jax.random.key(0), tokens, mask, mask_id=MASK,
                                     vocab_size=VOCAB, first_regular=4, keep=(BOS, EOS))
    inputs, chosen = np.asarray(inputs), np.asarray(chosen)
    eligible = mask & (tokens != BOS) & (tokens != EOS)
    assert not (chosen & ~eligible).any()
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.005)
    c = chosen
    to_mask = (inputs[c] == MASK).mean()
    same = (inputs[c] == tokens[c]).mean()
    assert to_mask == pytest.approx(0.8, abs=0.01)
    assert same == pytest.approx(0.1 + 0.1 / (VOCAB - 4), abs=0.01)   # kept, or drew itself
    assert 1 - to_mask - same == pytest.approx(0.1, abs=0.01)
    assert (inputs[~c] == tokens[~c]).all()
    assert ((inputs[c] == MASK) | (inputs[c] >= 4)).all()     # random ids are never specials


@pytest.mark.parametrize("chunk", [None, 3])
def test_vocab_nll_in_chunks_matches_numpy_and_the_plain_logits(chunk):
    """Per-token nll and hits of the logits states @ kernel + bias, the positions in chunks of
    `chunk` (7 = 3 + 3 + 1: padded), against numpy and, with gradients, against the plain
    [B, L, V] logits' log-softmax."""
    rng = np.random.default_rng(1)
    states = rng.normal(size=(4, 7, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 11)).astype(np.float32)
    bias = rng.normal(size=(11,)).astype(np.float32)
    targets = rng.integers(0, 11, (4, 7))
    chosen = rng.random((4, 7)) < 0.3
    args = jnp.asarray(states), jnp.asarray(kernel), jnp.asarray(bias)

    def loss(fn, *a):
        return masked.token_loss(*fn(*a), jnp.asarray(chosen))

    chunked = lambda x, k, b: masked.vocab_nll(x, k, b, jnp.asarray(targets), chunk=chunk)

    def plain(x, k, b):
        logits = x @ k + b
        logp = jax.nn.log_softmax(logits)
        t = jnp.asarray(targets)[..., None]
        return -jnp.take_along_axis(logp, t, -1)[..., 0], jnp.argmax(logits, -1) == t[..., 0]

    (value, m), grads = jax.value_and_grad(lambda *a: loss(chunked, *a), argnums=(0, 1, 2),
                                           has_aux=True)(*args)
    logits = states @ kernel + bias
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    assert float(value) == pytest.approx(nll[chosen].mean(), rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx((logits.argmax(-1) == targets)[chosen].mean())
    want = jax.grad(lambda *a: loss(plain, *a)[0], argnums=(0, 1, 2))(*args)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_mim_masking_and_loss():
    vis, msk = masked.patch_mask(jax.random.key(0), 512, 64)
    vis, msk = np.asarray(vis), np.asarray(msk)
    assert vis.shape == (512, 16) and (msk.sum(1) == 48).all()          # exactly 75% masked
    assert all(not msk[i, vis[i]].any() for i in range(512))
    assert abs(msk.mean(0) - 0.75).max() < 0.1                           # every patch alike
    assert len({tuple(v) for v in vis}) > 500                            # fresh subsets
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (3, 8, 8, 3)).astype(np.float32)
    pred = rng.normal(size=(3, 4, 48)).astype(np.float32)
    m = rng.random((3, 4)) < 0.75
    m[0, 0] = True
    loss, _ = masked.mim_loss(jnp.asarray(pred), jnp.asarray(images), jnp.asarray(m), 4)
    patches = np.stack([images[:, i:i + 4, j:j + 4].reshape(3, -1)
                        for i in (0, 4) for j in (0, 4)], axis=1)
    t = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
    assert float(loss) == pytest.approx(((pred - t) ** 2).mean(-1)[m].mean(), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_masks_do_not_depend_on_the_device_count(n):
    tokens, mask = _tokens(n=64, length=16)
    mesh = make_mesh(n)
    sh = NamedSharding(mesh, P("data"))

    @jax.jit
    def draw(t, m):
        inputs, chosen = masked.mlm_mask(jax.random.key(7), t, m, mask_id=MASK, vocab_size=VOCAB,
                                         first_regular=4, keep=(BOS, EOS))
        return inputs, chosen, masked.patch_mask(jax.random.key(8), t.shape[0], 16)[1]

    ref = draw(tokens, mask)
    got = draw(jax.device_put(tokens, sh), jax.device_put(mask, sh))
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
