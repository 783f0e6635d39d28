"""Adding an evaluator or an objective is its own module plus a config entry (README:
Extending): a module the package has never seen, registered only by name in the config, runs.
And the package's import graph has no cycle."""
import ast
import sys
import types
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from conftest import tiny_config
from helpers import jitted_method

from vlm_jax import config as config_lib, evals, objectives
from vlm_jax.data import pipeline
from vlm_jax.setup import Setup


def _plug(monkeypatch, package: str, name: str, registry: str, cls_name: str, cls, entry):
    """Module vlm_jax.<package>.<name> defining `cls`, its name in config.<registry>, and the
    config entry `entry(defaults)` in the schema."""
    module = types.ModuleType(f"vlm_jax.{package}.{name}")
    setattr(module, cls_name, cls)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(config_lib, registry, getattr(config_lib, registry) + (name,))
    defaults = config_lib.defaults

    def with_entry():
        c = defaults()
        entry(c)
        return c
    monkeypatch.setattr(config_lib, "defaults", with_entry)


class _EmbedNorm:
    image_keys = ("img/embed",)

    def __init__(self, data, config):
        self.data = data

    def run(self, params, dataset):
        emb = self.data.images(params, dataset, key="img/embed")
        return {"embed_norm": float(np.linalg.norm(emb, axis=1).mean())}


def test_a_new_evaluator_is_a_module_plus_a_config_entry(data_dir, monkeypatch):
    def entry(c):
        c.eval.embed_norm = ("digits",)
        config_lib.evaluator(c.eval, "embed_norm")
    _plug(monkeypatch, "evals", "embed_norm", "EVALUATORS", "Evaluator", _EmbedNorm, entry)
    cfg = tiny_config(data_dir, base=config_lib.defaults(), **{
        "eval.zeroshot": (), "eval.retrieval": (), "eval.embed_norm_prefix": "norm/"})
    s = Setup(cfg)                       # the default mesh: its init is compiled already
    params = s.init_state().params
    out = evals.Evaluators(s).run(params)
    images = pipeline.load_split("digits", "test", data_dir, cfg.data.image_size)["image"]
    emb = jitted_method(s.model, s.model.encode_image)(jax.device_get(params), images)[
        "img/embed"]
    assert out == {"norm/embed_norm": pytest.approx(float(np.linalg.norm(emb, axis=1).mean()),
                                                     rel=1e-5)}


class _L2:
    name = "l2"
    cross_example = False
    reads = ()
    heads = ()

    def __init__(self, scale):
        self.scale = scale

    @classmethod
    def from_config(cls, config, tokenizer=None):
        return cls(config.l2.scale)

    def __call__(self, out, batch, ctx):
        loss = self.scale * (out["img/embed"] ** 2).sum(-1).mean()
        return loss, {"scale": self.scale}


def test_a_new_objective_is_a_module_plus_a_config_section(data_dir, monkeypatch):
    def entry(c):
        c.l2 = ml_collections.ConfigDict()
        config_lib.objective(c.l2)
        c.l2.scale = 1.0
    _plug(monkeypatch, "objectives", "l2", "OBJECTIVES", "Objective", _L2, entry)
    cfg = tiny_config(data_dir, base=config_lib.defaults(), **{"l2.weight": 0.5,
                                                                "l2.scale": 2.0})
    s = Setup(cfg)                       # the default mesh: its init is compiled already
    assert objectives.names(cfg) == ["contrastive", "l2"]
    state = s.init_state()
    with s.context():
        _, m = s.train_step()(state, pipeline.to_global(s.synthetic_batch(), s.batch_sh),
                              s.step_rng)
    m = jax.device_get(m)
    assert m["l2/weight"] == 0.5 and m["l2/scale"] == 2.0 and m["l2/loss"] > 0
    np.testing.assert_allclose(m["loss"], m["contrastive/loss"] + 0.5 * m["l2/loss"], rtol=1e-5)


# The generic machinery names no particular evaluator or objective: those live in their modules
# and the config (models/ holds the heads an objective may add). Docstrings may mention them.
GENERIC = ["vlm_jax/setup.py", "vlm_jax/evals/__init__.py", "vlm_jax/evals/common.py",
           "vlm_jax/objectives/__init__.py", "vlm_jax/train", "launch/train.py", "launch/eval.py",
           "launch/sweep.py", "launch/flags.py"]


def _mentions(path: Path, names: set) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            out.append(f"{path}:{node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Constant) and node.value in names
              and id(node) not in docstrings):
            out.append(f"{path}:{node.lineno}: {node.value!r}")
    return out


def test_the_generic_machinery_names_no_evaluator_or_objective():
    root = Path(__file__).resolve().parents[1]
    files = [p for g in GENERIC for p in ([root / g] if g.endswith(".py")
                                           else sorted((root / g).rglob("*.py")))]
    names = set(config_lib.EVALUATORS + config_lib.OBJECTIVES)
    found = [m for path in files for m in _mentions(path, names)]
    assert not found, "\n".join(found)


def _imports(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any level (function-level imports too)."""
    mods = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}

    def owner(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(root.name):
                targets = [owner(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names if a.name.startswith(root.name)]
            else:
                continue
            edges[m].update(t for t in targets if t and t != m)
    return edges


def test_no_import_cycle_in_the_package():
    edges = _imports(Path(__file__).resolve().parents[1] / "vlm_jax")
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
