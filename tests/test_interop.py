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
    import open_clip     # the interop extra, which the tests install
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


OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# Crops (width, height) of the photos scikit-learn ships, some smaller than the 32-pixel input.
CROPS = [(64, 40), (24, 30), (40, 96), (33, 33), (20, 52), (90, 60)]


def _photo_folder(root, classes=("bird", "cat", "dog"), per_class=4):
    """root/<class>/<i>.jpg cut from sklearn's sample photos; returns (files, labels)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    files, labels = [], []
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = CROPS[(k * per_class + i) % len(CROPS)]
            photo = photos[(k + i) % 2]
            y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
            f = root / name / f"{i}.jpg"
            Image.fromarray(photo[y:y + h, x:x + w]).save(f, quality=90)
            files.append(f)
            labels.append(k)
    return files, np.array(labels)


def _zero_shot_logits(encode_images, encode_texts, classes, templates):
    """CLIP_benchmark's zero-shot: each class's prompt embeddings normalised, averaged and
    normalised again; logits 100 x cosine with the normalised image embeddings."""
    txt = _unit(encode_texts([t.format(c=c) for c in classes for t in templates]))
    cls = _unit(txt.reshape(len(classes), len(templates), -1).mean(1))
    return 100 * _unit(encode_images()) @ cls.T


def _check_zero_shot(out_dir, name, want, labels):
    """The written predictions against the reference logits, and the reported scores."""
    from sklearn.metrics import balanced_accuracy_score
    pred = np.load(out_dir / "predictions" / f"{name}.zeroshot.npz")
    np.testing.assert_array_equal(pred["label"], labels)
    np.testing.assert_allclose(pred["logits"], want, atol=1e-3)
    np.testing.assert_array_equal(pred["top5"][:, 0], want.argmax(1))
    np.testing.assert_allclose(np.take_along_axis(want, pred["top5"], 1), pred["top5_logits"],
                               atol=1e-3)
    assert len(set(want.argmax(1))) > 1, want          # not one class for every image
    report = json.load(open(out_dir / "results.json"))["results"][name]
    assert report["zeroshot_mean_per_class_recall"] == pytest.approx(
        balanced_accuracy_score(labels, want.argmax(1)), abs=1e-9)
    return report


def _evaluate(ckpt, suite_dir, files, templates: str):
    """launch.eval's suite evaluation, in-process, on the photo folder with `{c}` templates."""
    from vlm_jax.train import evaluate
    suite_dir.mkdir(parents=True, exist_ok=True)
    (suite_dir / "templates.txt").write_text(templates)
    suite = write_suite(suite_dir / "suite.py", {"photos": dict(
        kind="folder", path=str(files[0].parent.parent),
        templates=str(suite_dir / "templates.txt"))}, zeroshot=("photos",))
    evaluate.evaluate_suite(str(ckpt), suite, output_dir=str(suite_dir / "out"))
    return suite_dir / "out"


def test_open_clip_conversion_evaluates_as_open_clip_does(tmp_path):
    """A tiny open_clip CLIP saved as a .pt, converted by launch.convert_weights and scored by
    launch.eval --checkpoint --suite on real photos: open_clip's own model, preprocess and
    tokenizer give the same per-image logits; the conversion's tokenizer is open_clip's."""
    import subprocess
    import sys

    import torch
    import open_clip     # the interop extra, which the tests install
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=24, vision_cfg=dict(layers=2, width=48, head_width=16, patch_size=8,
                                      image_size=32, mlp_ratio=2),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1,
                      mlp_ratio=2))
    _perturb(model)
    torch.save(model.state_dict(), tmp_path / "oc.pt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "launch.convert_weights", "--input",
                        str(tmp_path / "oc.pt"), "--output", str(tmp_path / "out"),
                        "--head_width", "16"], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "eval view: shortest 32px, bicubic" in r.stdout, r.stdout
    assert "tokenizer: hf" in r.stdout and "49408 ids, clean lower" in r.stdout, r.stdout
    files, labels = _photo_folder(tmp_path / "photos")
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\nA blurry photo of the {c}!\n")
    suite = write_suite(tmp_path / "suite.py", {"photos": dict(
        kind="folder", path=str(tmp_path / "photos"), templates=str(tmp_path / "templates.txt"))},
        zeroshot=("photos",))
    r = subprocess.run([sys.executable, "-m", "launch.eval", "--checkpoint", str(tmp_path / "out"),
                        "--suite", suite, "--config.eval.batch_size=8"], cwd=root,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out" / "eval" / "suite"
    preprocess = image_transform_v2(PreprocessCfg(size=32), is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        want = _zero_shot_logits(
            lambda: model.encode_image(torch.stack([preprocess(Image.open(f)) for f in files])
                                       ).numpy(),
            lambda texts: model.encode_text(tokenizer(texts)).numpy(),
            ("bird", "cat", "dog"), ("a photo of a {c}.", "A blurry photo of the {c}!"))
    report = _check_zero_shot(out, "photos", want, labels)
    # CLIP_benchmark's record for the set, under its file name.
    record = json.load(open(out / "clip_benchmark" / "photos_step0_out_en_zeroshot_classification.json"))
    assert record == {"dataset": "photos", "model": "out", "pretrained": "step0",
                      "task": "zeroshot_classification", "language": "en",
                      "metrics": {"acc1": report["zeroshot_top1"], "acc5": report["zeroshot_top5"],
                                  "mean_per_class_recall": report["zeroshot_mean_per_class_recall"]}}
    # The tokenizer written beside the checkpoint gives open_clip's ids.
    from vlm_jax import config as config_lib
    from vlm_jax.data import tokenizer as tokenizer_lib
    config = config_lib.from_json((tmp_path / "out" / "config.json").read_text())
    ours = tokenizer_lib.build(config)
    texts = _varied_texts()
    ids, mask = tokenizer_lib.tokenize(ours, texts, config.tokenizer.max_len)
    want_ids = tokenizer(texts).numpy()
    mismatched = [t for t, a, b in zip(texts, ids, want_ids) if not np.array_equal(a, b)]
    assert not mismatched, mismatched[:5]
    np.testing.assert_array_equal(mask, want_ids != 0)
    # A tokenizer that does not fit the checkpoint: one line naming both sizes, no traceback.
    r = subprocess.run([sys.executable, "-m", "launch.eval", "--checkpoint", str(tmp_path / "out"),
                        "--suite", suite, "--config.tokenizer.name=bytes"], cwd=root,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "launch.eval: tokenizer.vocab_size=49408 but the 'bytes' tokenizer has 260 ids; set it to 0 (read "
        "from the file) or match"), r.stderr[-500:]


def _varied_texts() -> list[str]:
    """A few hundred strings: case, punctuation, contractions, unicode, digits, HTML entities,
    whitespace runs, mojibake, emoji and texts far past 77 tokens."""
    rng = np.random.default_rng(0)
    words = ["a", "Photo", "OF", "the", "dog's", "can't", "we'll", "naïve", "café", "Ünïcödé",
             "東京", "Привет", "😀", "3.14", "2024", "x86_64", "e-mail", "&amp;", "&lt;b&gt;",
             "don’t", "Ã©", "\t", "  ", "!!!", "...", "#tag", "@user", "C++", "50%", "ﬁne",
             "hello,world", "UPPER", "snake_case", "CamelCase", "é", "ß", "ǅ", "١٢٣", "—", "…"]
    texts = ["", " ", "a photo of a dog.", "A PHOTO OF A DOG.", "word " * 100]
    for _ in range(295):
        n = int(rng.integers(1, 30))
        texts.append(" ".join(rng.choice(words, n)))
    return texts


def test_hugging_face_conversions_evaluate_as_transformers_does(tmp_path):
    """Tiny CLIPModel and SiglipModel folders with their image processors (the PIL ones, the
    pixels open_clip's users get): converted, the preprocessing travels, and launch.eval's
    suite gives transformers' per-image zero-shot logits on real photos."""
    import torch
    import transformers
    files, labels = _photo_folder(tmp_path / "photos")
    classes = ("bird", "cat", "dog")
    # CLIP: bicubic shortest edge 36, centre crop 32 (a crop fraction), OpenAI's statistics.
    hf = _hf_clip(tmp_path / "clip")
    _hf_tokenizer(tmp_path / "clip")
    proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 36},
                                              crop_size={"height": 32, "width": 32})
    proc.save_pretrained(tmp_path / "clip")
    config, _ = interop.convert(str(tmp_path / "clip"), str(tmp_path / "clip_out"))
    i = config.model.image
    assert (i.resize, i.interpolation, i.crop_rounding, i.pixel_norm) == (
        "shortest", "bicubic", "floor", "clip")
    templates = ("{c}", "a photo of the {c} .")
    out = _evaluate(tmp_path / "clip_out", tmp_path / "clip_suite", files, "\n".join(templates))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "clip" / "tokenizer.json"),
                                               pad_token="<pad>")

    def clip_texts(texts):
        enc = tok(texts, padding="max_length", max_length=TEXT["max_position_embeddings"],
                  return_tensors="pt")
        return _features(hf.get_text_features(input_ids=enc["input_ids"],
                                              attention_mask=enc["attention_mask"]))
    with torch.no_grad():
        pixels = proc([_rgb(f) for f in files], return_tensors="pt")["pixel_values"]
        want = _zero_shot_logits(lambda: _features(hf.get_image_features(pixel_values=pixels)),
                                 clip_texts, classes, templates)
    _check_zero_shot(out, "photos", want, labels)
    # SigLIP: bicubic squash, mean/std 0.5; texts end in EOS, padded with it, no mask.
    cfg = transformers.SiglipConfig(
        text_config=dict(TEXT, hidden_size=48, intermediate_size=96, pad_token_id=1,
                         eos_token_id=1), vision_config=dict(VISION))
    torch.manual_seed(0)
    sig = _perturb(transformers.SiglipModel(cfg))
    sig.save_pretrained(tmp_path / "siglip")
    proc = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    proc.save_pretrained(tmp_path / "siglip")
    _siglip_tokenizer(tmp_path / "siglip")
    config, _ = interop.convert(str(tmp_path / "siglip"), str(tmp_path / "siglip_out"))
    assert (config.model.image.resize, config.model.image.pixel_norm, config.tokenizer.pad_id,
            config.tokenizer.attend_padding, config.tokenizer.bos) == ("squash", "unit", 1, True,
                                                                      False)
    out = _evaluate(tmp_path / "siglip_out", tmp_path / "siglip_suite", files, "\n".join(templates))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "siglip" / "tokenizer.json"), pad_token="</s>")

    def siglip_texts(texts):
        ids = tok(texts, padding="max_length", max_length=TEXT["max_position_embeddings"],
                  return_tensors="pt")["input_ids"]
        return _features(sig.get_text_features(input_ids=ids))
    with torch.no_grad():
        pixels = proc([_rgb(f) for f in files], return_tensors="pt")["pixel_values"]
        want = _zero_shot_logits(lambda: _features(sig.get_image_features(pixel_values=pixels)),
                                 siglip_texts, classes, templates)
    _check_zero_shot(out, "photos", want, labels)


def _rgb(path):
    from PIL import Image
    return Image.open(path).convert("RGB")


def _siglip_tokenizer(path):
    """A word-level tokenizer.json laid out as SigLIP's: <pad> 0, </s> 1 (EOS and padding),
    texts end in </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<pad>": 0, "</s>": 1, "[UNK]": 2}
    vocab.update({w: 3 + i for i, w in enumerate(WORDS)})
    vocab.update({f"w{i}": i for i in range(3 + len(WORDS), TEXT["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(path / "tokenizer.json"))
