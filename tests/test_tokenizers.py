"""Every tokenizer kind, with its asset built here: round trips, specials, truncation, padding."""
import json

import pytest

from vlm_jax import config as config_lib
from vlm_jax.data import tokenizer as tok_lib

CORPUS = [f"a photo of {n} {c} {s}" for n in ("one", "two", "three", "four")
          for c in ("red", "green", "blue") for s in ("circles", "squares", "triangles")]
TEXTS = ["a photo of two red squares", "three blue circles", "héllo wörld 7"]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm
    prefix = str(tmp_path_factory.mktemp("sp") / "tok")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4 + ["héllo wörld 7"]), model_prefix=prefix,
        vocab_size=284, model_type="unigram", character_coverage=1.0, pad_id=0, unk_id=1,
        bos_id=2, eos_id=3, minloglevel=2, byte_fallback=True)
    return prefix + ".model"


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    path = str(tmp_path_factory.mktemp("hf") / "tokenizer.json")
    tok.save(path)
    return path


def _build(name, path="", **kw):
    c = config_lib.defaults()
    c.tokenizer.name, c.tokenizer.path = name, path
    for k, v in kw.items():
        c.tokenizer[k] = v
    config_lib.validate(c)
    return tok_lib.build(c)


@pytest.fixture(params=["bytes", "sentencepiece", "hf"])
def tokenizer(request, sp_model, hf_json):
    return _build(request.param, {"bytes": "", "sentencepiece": sp_model, "hf": hf_json}[request.param])


def test_round_trip(tokenizer):
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids and all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text
    # Specials are dropped by decode, so a tokenized row decodes to its text too.
    row, mask = tok_lib.tokenize(tokenizer, TEXTS[:1], 32)
    assert tokenizer.decode(row[0][mask[0]]) == TEXTS[0]


def test_layout_truncation_and_padding(tokenizer):
    t = tokenizer
    n = len(t.encode(TEXTS[0]))
    ids, mask = tok_lib.tokenize(t, [TEXTS[0], TEXTS[0]], n + 5)
    assert ids[0, 0] == t.bos_id and ids[0, n + 1] == t.eos_id
    assert mask[0].tolist() == [True] * (n + 2) + [False] * 3
    assert (ids[0, n + 2:] == t.pad_id).all()
    short, smask = tok_lib.tokenize(t, [TEXTS[0]], 6)       # truncated: content cut, EOS kept
    assert smask.all() and short[0, 0] == t.bos_id and short[0, -1] == t.eos_id
    assert short[0, 1:5].tolist() == t.encode(TEXTS[0])[:4]


def test_specials_are_explicit(sp_model, hf_json):
    for name, path in (("bytes", ""), ("sentencepiece", sp_model), ("hf", hf_json)):
        t = _build(name, path, bos=False, eos=False)
        ids, mask = tok_lib.tokenize(t, ["two red"], 16)
        assert ids[0, : mask[0].sum()].tolist() == t.encode("two red")
    t = _build("bytes", eos=False)
    ids, mask = tok_lib.tokenize(t, ["ab"], 4)
    assert ids[0].tolist() == [t.bos_id, *t.encode("ab"), t.pad_id]


def test_bad_tokenizer_config_is_named(tmp_path, hf_json):
    with pytest.raises(ValueError, match="needs tokenizer.path"):
        _build("sentencepiece")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        _build("sentencepiece", str(tmp_path / "nope.model"))
    with pytest.raises(config_lib.ConfigError, match="tokenizer.name"):
        _build("wordpiece")
    # A vocab without an end token cannot honour eos=True.
    raw = json.load(open(hf_json))
    raw["added_tokens"] = [a for a in raw["added_tokens"] if a["content"] != "</s>"]
    del raw["model"]["vocab"]["</s>"]
    path = tmp_path / "no_eos.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="no EOS token"):
        _build("hf", str(path))
    assert _build("hf", str(path), eos=False).eos_id is None
    with pytest.raises(ValueError, match="no room"):
        tok_lib.tokenize(_build("bytes"), ["x"], 2)


def test_shapes_word_tokenizer_is_current_and_covers_every_caption(tmp_path):
    import itertools

    from vlm_jax.data.builtin import shapes
    from vlm_jax.data.tokenizer import HFTokenizer
    fresh = shapes.write_tokenizer(str(tmp_path / "tok.json"))
    assert open(fresh).read() == open(shapes.TOKENIZER).read()    # the shipped file is current
    tok = HFTokenizer(shapes.TOKENIZER)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3)
    unk = tok.tok.token_to_id("[UNK]")
    lengths = []
    for objs in itertools.chain.from_iterable(itertools.product(
            itertools.product(shapes.COLORS, shapes.KINDS), repeat=n) for n in (1, 2, 3)):
        for caption in shapes.describe(list(objs)):
            ids = tok.encode(caption)
            assert unk not in ids
            assert tok.decode(ids).replace(" ,", ",").replace(" :", ":") == caption
            lengths.append(len(ids))
    assert max(lengths) + 2 <= 20      # configs/shapes.py's tokenizer.max_len, BOS and EOS
