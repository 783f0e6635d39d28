"""Model FLOPs of the train step and the MFU metric the trainer logs."""
import json

import jax
import pytest
from conftest import make_mesh, tiny_config

from vlm_jax.train import flops


def _flops(cfg, mesh):
    from vlm_jax.data import pipeline
    from vlm_jax.setup import Setup
    s = Setup(cfg, mesh)
    batch = s.synthetic_batch()
    return flops.step_flops(s, pipeline.to_global(batch, s.batch_sh))


def test_step_flops_are_the_plain_steps_whatever_the_memory_savers(data_dir):
    mesh = make_mesh(2)
    base = _flops(tiny_config(data_dir), mesh)
    # Scan, remat and micro-batches change how the step runs, not the model's work.
    saver = _flops(tiny_config(data_dir, **{"model.scan": True, "model.remat": "nothing_saveable",
                                            "microbatches": 2}), mesh)
    assert saver == base
    # Global: the same on one device; and the work grows with the batch.
    assert _flops(tiny_config(data_dir), make_mesh(1)) == pytest.approx(base, rel=1e-3)
    double = _flops(tiny_config(data_dir, batch_size=32), mesh)
    assert 1.8 * base < double < 2.05 * base

    # Against a hand count: three times the forward matmuls (forward, two backward), the rest
    # (norms, softmax, loss, optimizer) small.
    c = tiny_config(data_dir)
    patches = (c.data.image_size // c.model.image.patch_size) ** 2

    def tower(t, tokens):   # q, k, v, out and the MLP; scores and weighted values
        return 2 * tokens * t.depth * (4 * t.width ** 2 + 2 * t.width * t.mlp_dim) \
            + 4 * t.depth * tokens ** 2 * t.width
    forward = (tower(c.model.image, patches) + tower(c.model.text, c.tokenizer.max_len)
               + 2 * patches * c.model.image.patch_size ** 2 * 3 * c.model.image.width
               + 2 * 2 * c.model.image.width * c.model.embed_dim)
    assert 1.0 < base / (3 * forward * c.batch_size) < 1.25


def test_step_flops_where_only_compiled_programs_are_analysed(data_dir, monkeypatch):
    """The GPU and TPU plugins have no cost analysis before compiling (Lowered.cost_analysis is
    None there): the same global step lowered for one CPU device counts the same (the count's
    independence of the mesh is the test above's)."""
    cfg = tiny_config(data_dir)
    lowered = _flops(cfg, make_mesh(1))
    real, calls = jax.stages.Lowered.cost_analysis, []

    def first_unavailable(self):              # the mesh's lowering: none; the CPU one's: real
        calls.append(self)
        return None if len(calls) == 1 else real(self)
    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", first_unavailable)
    assert _flops(cfg, make_mesh(1)) == pytest.approx(lowered, rel=1e-3) and len(calls) == 2


def test_peak_per_device():
    assert flops.peak_per_device(2.5) == 2.5e12
    cpu = jax.devices()[0]
    assert flops.peak_per_device(device=cpu) is None
    fake = type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()
    assert flops.peak_per_device(device=fake) == 989e12
    assert flops.peak_per_device(device=type("D", (), {"device_kind": "TPU v5 lite"})()) == 197e12


def test_trainer_logs_tflops_and_mfu(data_dir, tmp_path):
    from vlm_jax.train import trainer
    # The suite's tiny run (its programs are shared with the other tests of the trainer).
    cfg = tiny_config(data_dir, **{"eval.retrieval": (), "log.peak_tflops": 0.001})
    trainer.train(cfg, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
    f = _flops(cfg, make_mesh(8))
    for r in train_rows:
        want = f * r["examples_per_sec"] / cfg.batch_size / 1e12
        assert r["tflops_per_sec"] == pytest.approx(want, rel=1e-6)
        assert r["mfu"] == pytest.approx(r["tflops_per_sec"] / (0.001 * jax.device_count()),
                                         rel=1e-6)
