"""Pretrained PyTorch towers (Hugging Face CLIP and SigLIP, open_clip) converted into our model
give the embeddings the PyTorch model gives, and LiT trains from a converted checkpoint."""
import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import jitted_method, write_suite

from vlm_jax import interop, models

# PyTorch and transformers are imported by the tests that use them: every test worker collects
# this file, and only one runs it.
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")),
    reason="needs the interop extra")

TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, bos_token_id=1, pad_token_id=0)
VISION = dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
              num_hidden_layers=2, num_attention_heads=4)
EOS = TEXT["vocab_size"] - 1


def _perturb(model, seed=0):
    """Random values in every tensor, layer norms and embeddings included (fresh models have
    ones and zeros there, which would hide a transposed or misplaced weight)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _pixels(images, mean, std):
    import torch
    x = (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _texts(lengths, length=16, seed=0):
    """Ids ending in EOS at each length, zeros after; the mask covers up to EOS."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), length), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n - 1] = rng.integers(1, EOS, n - 1)
        ids[i, n - 1] = EOS
    return ids, np.arange(length)[None] < np.asarray(lengths)[:, None]


def _features(out):
    # transformers 5 returns model outputs from get_*_features, 4.x a tensor.
    out = getattr(out, "pooler_output", out)
    return out.detach().numpy()


def _ours(config, params, images, ids, mask):
    model = models.build(config, params["txt"]["embedding"]["embedding"].shape[0])
    img = jitted_method(model, model.encode_image)(params, images)
    txt = jitted_method(model, model.encode_text)(params, ids, mask)
    return np.asarray(img["img/embed"]), np.asarray(txt["txt/embed"])


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _compare(ours, theirs):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(_unit(a), _unit(b), atol=1e-4)


def _hf_clip(path):
    import torch
    import transformers
    cfg = transformers.CLIPConfig(
        text_config=dict(TEXT, hidden_act="quick_gelu", eos_token_id=EOS),
        vision_config=dict(VISION, hidden_act="quick_gelu"), projection_dim=24)
    torch.manual_seed(0)
    model = _perturb(transformers.CLIPModel(cfg))
    model.save_pretrained(path)
    return model


def test_hugging_face_clip_embeddings_match(tmp_path):
    import torch
    hf = _hf_clip(tmp_path / "hf")
    config, params = interop.convert(str(tmp_path / "hf"), str(tmp_path / "out"))
    assert (config.model.act, config.model.image.pool, config.model.text.causal) == (
        "quick_gelu", "cls", True)
    images = _images()
    ids, mask = _texts([16, 5, 9])
    with torch.no_grad():
        want_img = _features(hf.get_image_features(
            pixel_values=_pixels(images, (0.48145466, 0.4578275, 0.40821073),
                                 (0.26862954, 0.26130258, 0.27577711))))
        want_txt = _features(hf.get_text_features(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask.astype(np.int64))))
    _compare(_ours(config, params, images, ids, mask), (want_img, want_txt))
    # Whatever follows EOS changes nothing: pooling reads the mask's last token.
    other = np.where(mask, ids, 7)
    _compare(_ours(config, params, images, other, mask), (want_img, want_txt))
    assert float(params["scale"]["t"]) == pytest.approx(float(hf.logit_scale.detach()))
    # The written checkpoint and config are what config.init and launch.eval read.
    from vlm_jax.train import checkpoint
    loaded, step = checkpoint.read_params(str(tmp_path / "out"))
    assert step == 0
    np.testing.assert_array_equal(loaded["img"]["posemb"], params["img"]["posemb"])
    saved = json.load(open(tmp_path / "out" / "config.json"))
    assert saved["model"]["image"]["width"] == VISION["hidden_size"]


def test_hugging_face_siglip_embeddings_match(tmp_path):
    import torch
    import transformers
    cfg = transformers.SiglipConfig(
        text_config=dict(TEXT, hidden_size=48, intermediate_size=96),
        vision_config=dict(VISION))
    torch.manual_seed(0)
    hf = _perturb(transformers.SiglipModel(cfg))
    hf.save_pretrained(tmp_path / "hf")
    config, params = interop.convert(str(tmp_path / "hf"), str(tmp_path / "out"))
    assert (config.model.image.pool, config.model.act, config.contrastive.name) == (
        "map", "gelu_tanh", "sigmoid")
    images = _images(seed=1)
    # SigLIP reads every position (pads included, no attention mask) and pools the last one.
    ids, _ = _texts([16, 16, 16], seed=1)
    ids[1, 6:] = 1        # a short caption padded with the pad id, as SigLIP's processor does
    mask = np.ones_like(ids, bool)
    with torch.no_grad():
        want_img = _features(hf.get_image_features(pixel_values=_pixels(images, 0.5, 0.5)))
        want_txt = _features(hf.get_text_features(input_ids=torch.from_numpy(ids).long()))
    _compare(_ours(config, params, images, ids, mask), (want_img, want_txt))
    assert float(params["scale"]["b"]) == pytest.approx(float(hf.logit_bias.detach()))


def test_open_clip_embeddings_match(tmp_path):
    import torch
    open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed")
    torch.manual_seed(0)
    # Both towers with 16-wide heads (3 and 2 heads): files do not record it, --head_width does.
    model = open_clip.CLIP(
        embed_dim=24, vision_cfg=dict(layers=2, width=48, head_width=16, patch_size=8,
                                      image_size=32, mlp_ratio=2),
        text_cfg=dict(context_length=16, vocab_size=TEXT["vocab_size"], width=32, heads=2,
                      layers=2, mlp_ratio=2))
    _perturb(model)
    torch.save(model.state_dict(), tmp_path / "oc.pt")
    config, params = interop.convert(str(tmp_path / "oc.pt"), None, act="gelu", head_width=16)
    assert (config.model.image.heads, config.model.text.heads) == (3, 2)
    images = _images(seed=2)
    ids, mask = _texts([16, 4, 10], seed=2)     # EOS is the largest id: open_clip pools argmax
    with torch.no_grad():
        want_img = model.encode_image(_pixels(images, (0.48145466, 0.4578275, 0.40821073),
                                              (0.26862954, 0.26130258, 0.27577711))).numpy()
        want_txt = model.encode_text(torch.from_numpy(ids).long()).numpy()
    _compare(_ours(config, params, images, ids, mask), (want_img, want_txt))


def test_conversion_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.convert(str(tmp_path / "nothing"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        interop.convert(str(tmp_path / "hf"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        interop.convert(str(tmp_path / "junk.pt"))


@pytest.mark.slow
def test_lit_trains_from_a_converted_clip_with_the_image_tower_locked(data_dir, tmp_path):
    import jax

    from configs import lit
    from vlm_jax.train import checkpoint, trainer
    _hf_clip(tmp_path / "hf")
    _, converted = interop.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    cfg = lit.get_config(str(tmp_path / "ckpt"))
    # The image tower's architecture comes from the conversion; the text tower is the recipe's.
    assert (cfg.model.image.width, cfg.model.image.pool, cfg.model.image.pixel_norm,
            cfg.model.act, cfg.model.embed_dim, cfg.data.image_size) == (
        48, "cls", "clip", "quick_gelu", 24, 32)
    cfg.data_dir, cfg.batch_size, cfg.total_steps, cfg.optim.warmup_steps = data_dir, 16, 4, 0
    cfg.log_every_steps, cfg.checkpoint_every_steps, cfg.async_checkpointing = 2, 4, False
    cfg.data.num_threads, cfg.eval.retrieval, cfg.eval.batch_size = 1, (), 64
    t = cfg.model.text
    t.width, t.depth, t.heads, t.mlp_dim = 32, 1, 2, 64
    last = trainer.train(cfg, str(tmp_path / "run"))
    assert np.isfinite(last["loss"]) and 0 <= last["eval/digits/zeroshot_top1"] <= 1
    trained, step = checkpoint.read_params(str(tmp_path / "run"))
    assert step == 4
    leaves = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, a), (_, b) in zip(leaves(trained["img"]), leaves(converted["img"])):
        np.testing.assert_array_equal(a, b, err_msg=str(path))   # locked: bit-identical
    # The image projection was loaded and learns; so does the text side.
    assert not np.array_equal(trained["img_proj"]["dense"]["kernel"],
                              converted["img_proj"]["dense"]["kernel"])


WORDS = ("a", "photo", "of", "the", ".", "cat", "dog", "bird")


def _hf_tokenizer(path):
    """A word-level tokenizer.json with CLIP's specials (ids 1 and EOS), as a CLIP folder has."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<pad>": 0, "<|startoftext|>": 1, "[UNK]": 2, "<|endoftext|>": EOS}
    vocab.update({w: 3 + i for i, w in enumerate(WORDS)})
    vocab.update({f"w{i}": i for i in range(3 + len(WORDS), EOS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", EOS)])
    tok.save(str(path / "tokenizer.json"))


def _hf_zero_shot(hf, hf_dir, files, classes, templates):
    """Each image's classes by transformers' CLIPModel, best first: prompts through the
    folder's tokenizer, images by the eval view (the centred square, resized)."""
    import torch
    import transformers

    from vlm_jax.data import images
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"),
                                               pad_token="<pad>")
    enc = tok([t.format(c) for c in classes for t in templates], padding="max_length",
              max_length=TEXT["max_position_embeddings"], return_tensors="pt")
    pixels = np.stack([images.render(open(f, "rb").read(), VISION["image_size"], "center")
                       for f in files])
    with torch.no_grad():
        txt = _unit(_features(hf.get_text_features(input_ids=enc["input_ids"],
                                                   attention_mask=enc["attention_mask"])))
        img = _unit(_features(hf.get_image_features(pixel_values=_pixels(
            pixels, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)))))
    cls = _unit(txt.reshape(len(classes), len(templates), -1).mean(1))
    return np.argsort(-(img @ cls.T), axis=1, kind="stable")


def _png(seed, size):
    """Noise around a per-image colour: images a random model tells apart."""
    import io

    from PIL import Image
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, 3) + rng.normal(0, 40, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_convert_weights_command_and_zero_shot_of_the_converted_model(tmp_path):
    """launch.convert_weights, then launch.eval --checkpoint on an image folder: the same
    per-image zero-shot predictions as transformers' CLIPModel on the same images, class names
    and templates."""
    import subprocess
    import sys

    hf = _hf_clip(tmp_path / "hf")
    _hf_tokenizer(tmp_path / "hf")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "launch.convert_weights", "--input",
                        str(tmp_path / "hf"), "--output", str(tmp_path / "out")],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "configs/lit.py:" in r.stdout and "act quick_gelu" in r.stdout
    assert (tmp_path / "out" / "checkpoints" / "0").is_dir()
    assert "converting" in r.stderr        # progress lines
    r = subprocess.run([sys.executable, "-m", "launch.convert_weights", "--input",
                        str(tmp_path / "missing"), "--output", str(tmp_path / "o2")],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "does not exist" in r.stderr
    # Zero-shot on an image folder (3 classes, images of several shapes) through launch.eval.
    files = []
    for k, name in enumerate(("bird", "cat", "dog")):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(5):
            f = tmp_path / "val" / name / f"{i}.png"
            f.write_bytes(_png(10 * k + i, [(48, 40), (32, 32), (40, 64)][i % 3]))
            files.append(str(f))
    (tmp_path / "templates.txt").write_text("a photo of a {}.\nthe {}\n")
    suite = write_suite(tmp_path / "suite.py", {"val": dict(
        kind="folder", path=str(tmp_path / "val"), templates=str(tmp_path / "templates.txt"))},
        zeroshot=("val",))
    r = subprocess.run([sys.executable, "-m", "launch.eval", "--checkpoint", str(tmp_path / "out"),
                        "--suite", suite], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| val | zeroshot_top1 |" in r.stdout and "[1/1] val" in r.stderr
    pred = np.load(tmp_path / "out" / "eval" / "suite" / "predictions" / "val.zeroshot.npz")
    want = _hf_zero_shot(hf, tmp_path / "hf", files, ("bird", "cat", "dog"),
                         ("a photo of a {}.", "the {}"))
    assert list(pred["index"]) == list(range(15))
    np.testing.assert_array_equal(pred["top5"], want)
    assert len({tuple(row) for row in want}) > 1, want     # not one ranking for every image
