"""The measured cost model, from tuning DBs written by the tests themselves."""

from __future__ import annotations

import json

import pytest
import torch

import sparsec
from sparsec import knobs
from sparsec.errors import PassFailedError, UsageError
from sparsec.passes.sparsify import GemmShape, Sparsify24, TuningDB, shapes_to_tune

from .nets import MLP


def _entry(m, n, k, dense, sparse, dtype="fp16"):
    return {"m": m, "n": n, "k": k, "dtype": dtype,
            "dense": {"config": f"dense_{m}x{n}x{k}", "us": dense}, "sparse": {"config": f"sp_{m}x{n}x{k}", "us": sparse}}


def _write(path, entries, arch="sm_90a", **extra):
    doc = {"schema": "sparsec.tuning/1", "arch": arch, "device": "test", "created": "2026-11-26T00:00:00Z",
           "versions": {}, "entries": entries, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return sparsec.trace(MLP().eval(), (torch.randn(64, 256),))  # N = 64 tokens


def test_decisions_follow_the_measurements(mlp, tmp_path):
    db = _write(tmp_path / "db.json", [
        _entry(512, 64, 256, dense=12.3, sparse=8.1),      # up: exact n, sparse wins
        _entry(256, 32, 512, dense=5.0, sparse=7.25),       # down: sparse loses at the nearest n ...
        _entry(256, 1024, 512, dense=50.0, sparse=20.0),    # ... (1024 is further from 64 in log scale)
        _entry(128, 64, 256, dense=9.0, sparse=1.0, dtype="bf16"),  # out: only bf16 measured
    ])
    d = {x.layer: x for x in Sparsify24(target="h100-sparse", tuning_db=str(db)).decide(mlp)}
    assert d["up"].sparse and d["up"].reason == "measured: sparse 8.1us < dense 12.3us at n=64"
    assert not d["down"].sparse and d["down"].reason == (
        "measured: sparse 7.25us >= dense 5us at n=32 (nearest measured to n=64): stays dense")
    assert not d["out"].sparse and d["out"].reason == (
        f"no measurement for this shape (m=128, k=256, fp16) in {db}: stays dense")
    d = {x.layer: x for x in Sparsify24(target="h100-sparse", tuning_db=str(db), dtype="bf16").decide(mlp)}
    assert d["out"].sparse and d["out"].reason == "measured: sparse 1us < dense 9us at n=64"
    assert not d["up"].sparse


def test_nearest_n_is_log_scale_and_ties_go_to_the_larger():
    db = TuningDB.parse(json.dumps({"schema": "sparsec.tuning/1", "arch": "sm_90a", "entries": [
        _entry(64, 32, 64, 1, 2), _entry(64, 128, 64, 2, 1), _entry(64, 100000, 64, 3, 3)]}))
    assert db.lookup(GemmShape(64, 64, 64, "fp16")).n == 128  # |log 32/64| == |log 128/64|
    assert db.lookup(GemmShape(64, 64, 40, "fp16")).n == 32
    assert db.lookup(GemmShape(64, 64, 20000, "fp16")).n == 100000  # log: 20000 is nearer 100000 than 128
    assert db.lookup(GemmShape(64, 32, 64, "fp16")) is None  # k must match exactly
    assert db.lookup(GemmShape(64, 64, 64, "bf16")) is None


def test_the_pass_masks_what_the_db_picks(mlp, tmp_path):
    db = _write(tmp_path / "db.json", [_entry(512, 64, 256, 12.3, 8.1), _entry(256, 64, 512, 5.0, 7.0),
                                       _entry(128, 64, 256, 3.0, 2.0)])
    mod = mlp.clone()
    records = sparsec.PassManager.parse(f'sparsify-2-4{{target=h100-sparse,tuning-db="{db}"}}').run(mod)
    assert records[0].stats["sparse"] == 2 and records[0].stats["dense"] == 1
    from sparsec.ir import meta as M

    marks = {n.target: M.get(n, M.Sparsity24) for n in mod.nodes("get_attr") if M.get(n, M.Sparsity24)}
    assert sorted(marks) == ["out.weight", "up.weight"]
    assert marks["up.weight"].reason == "measured: sparse 8.1us < dense 12.3us at n=64"
    down = next(n for n in mod.nodes("call_function") if M.get(n, M.Dense24))
    assert M.get(down, M.Dense24).reason == "measured: sparse 7us >= dense 5us at n=64: stays dense"


def test_default_db_from_the_cache_dir(mlp, tmp_path, monkeypatch):
    """Without tuning-db=, the DB `sparsec tune` writes by default (<cache dir>/tuning/<arch>.json) is
    used; else the one the backend ships; else the pass says how to measure one."""
    from sparsec.passes.sparsify import costmodel

    with knobs.scope(cache_dir=tmp_path):
        if costmodel.shipped_db("sm_90a").is_file():
            shipped = Sparsify24(target="h100-sparse").decide(mlp)
            assert all("backends/cutlass/tuned/sm_90a.json" in x.reason or x.reason.startswith("measured")
                       for x in shipped)
        monkeypatch.setattr(costmodel, "shipped_db", lambda arch: tmp_path / "nothing-shipped" / f"{arch}.json")
        with pytest.raises(PassFailedError, match="no tuning DB for sm_90a") as info:
            Sparsify24(target="h100-sparse").decide(mlp)
        assert "fix:      measure one with `sparsec tune`" in str(info.value)
        _write(tmp_path / "tuning" / "sm_90a.json", [_entry(512, 64, 256, 12.3, 8.1)])
        d = {x.layer: x for x in Sparsify24(target="h100-sparse").decide(mlp)}
    assert d["up"].sparse and str(tmp_path) not in d["up"].reason
    assert d["down"].reason.startswith("no measurement for this shape (m=256, k=512, fp16) in ")


def test_db_of_another_arch_is_refused(mlp, tmp_path):
    db = _write(tmp_path / "a100.json", [], arch="sm_80")
    with pytest.raises(PassFailedError, match=r"was measured on sm_80, not on target 'h100-sparse' \(sm_90a\)"):
        Sparsify24(target="h100-sparse", tuning_db=str(db)).decide(mlp)


@pytest.mark.parametrize("doc, message", [
    ({"schema": "sparsec.tuning/2", "arch": "sm_90a", "entries": []}, "schema is 'sparsec.tuning/2'"),
    ({"schema": "sparsec.tuning/1", "entries": []}, "missing key 'arch'"),
    ({"schema": "sparsec.tuning/1", "arch": "sm_90a", "entries": [{"m": 1, "n": 1, "k": 4, "dtype": "fp16",
                                                                    "dense": {"us": 1.0}}]},
     "entries[0]: missing key 'sparse'"),
    ({"schema": "sparsec.tuning/1", "arch": "sm_90a", "entries": [_entry(1, 1, 4, 1.0, -2.0)]},
     "entries[0]: sparse.us is -2.0, expected a positive time"),
    ({"schema": "sparsec.tuning/1", "arch": "sm_90a", "entries": [_entry(1, 1, 4, "fast", 2.0)]},
     "entries[0]: 'us' is str, expected int or float"),
])
def test_malformed_db(tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="is not a valid sparsec.tuning/1 file") as info:
        TuningDB.load(path)
    assert message in str(info.value) and "regenerate it with `sparsec tune`" in str(info.value)


def test_missing_db_file_fails_when_the_pass_is_made(tmp_path):
    with pytest.raises(UsageError, match=f"tuning DB file '{tmp_path}/nope.json' does not exist") as info:
        Sparsify24(target="h100-sparse", tuning_db=str(tmp_path / "nope.json"))
    assert "fix:      measure one on the GPU with `sparsec tune`" in str(info.value)


def test_measured_needs_a_sparse_target(mlp):
    for target, actual in ((None, "no target (sparsec opt)"), ("cpu", "target 'cpu' has none")):
        with pytest.raises(PassFailedError, match="cost-model=measured needs a target with 2:4 kernels") as info:
            Sparsify24(target=target).decide(mlp)
        assert actual in str(info.value) and "cost-model=shape" in str(info.value)


def test_kernel_dtype_follows_the_model(mlp, tmp_path):
    db = _write(tmp_path / "db.json", [_entry(512, 64, 256, 12.3, 8.1, dtype="bf16")])
    d = {x.layer: x for x in Sparsify24(target="h100-sparse", tuning_db=str(db)).decide(mlp)}
    assert not d["up"].sparse and d["up"].gemm.dtype == "fp16"  # an fp32 model: fp16 kernels by default
    bf16 = mlp.clone()
    sparsec.PassManager.parse("to-dtype{dtype=bf16}").run(bf16)
    d = {x.layer: x for x in Sparsify24(target="h100-sparse", tuning_db=str(db)).decide(bf16)}
    assert d["up"].sparse and d["up"].gemm.dtype == "bf16"
    assert d["up"].reason == "measured: sparse 8.1us < dense 12.3us at n=64"


def test_sparse_24_pipeline_decides_for_the_compile_target(mlp, tmp_path):
    """What `sparsec compile --target h100-sparse` runs once the CUTLASS backend returns the sparse-24
    pipeline: the pass reads the target from the PassContext and the DB from the cache dir."""
    from sparsec.ir import meta as M
    from sparsec.passes.manager import PassContext
    from sparsec.registry import registry

    _write(tmp_path / "tuning" / "sm_90a.json", [_entry(512, 64, 256, 12.3, 8.1), _entry(256, 64, 512, 4.0, 3.0)])
    mod = mlp.clone()
    with knobs.scope(cache_dir=tmp_path):
        records = sparsec.PassManager.parse("sparse-24").run(mod, PassContext(target=registry().get("target", "h100-sparse")))
    stats = next(r.stats for r in records if r.name == "sparsify-2-4")
    assert stats["sparse"] == 2 and stats["dense"] == 1
    marked = sorted(n.target for n in mod.nodes("get_attr") if M.get(n, M.Sparsity24))
    assert marked == ["down.weight", "up.weight"]


def test_kxk_conv_stays_dense_under_the_measured_model(tmp_path):
    # The DB says the 3x3 conv's GEMM (m=32, k=9*16) is faster sparse, and the 1x1 conv's too; only the
    # 1x1 goes sparse, because the kxk path's im2col is not in any measurement.
    from .nets import conv_net

    mod = sparsec.trace(conv_net(), (torch.randn(2, 3, 8, 8),))  # N = 2*8*8 = 128 tokens
    db = _write(tmp_path / "db.json", [_entry(32, 128, 144, dense=9.0, sparse=3.0),
                                       _entry(64, 128, 32, dense=9.0, sparse=3.0)])
    d = {x.layer: x for x in Sparsify24(target="h100-sparse", tuning_db=str(db)).decide(mod)}
    assert not d["conv"].sparse and d["conv"].reason.startswith("kxk conv: its 2:4 path adds an im2col of K=144")
    assert d["pw"].sparse and d["pw"].reason == "measured: sparse 3us < dense 9us at n=128"
    shape = {x.layer: x for x in Sparsify24(target="h100-sparse", cost_model="shape").decide(mod)}
    assert shape["conv"].sparse  # cost-model=shape still marks it


def test_shapes_to_tune_are_what_the_compiled_pipeline_looks_up(mlp, tmp_path):
    """`sparsec tune --model`'s shapes: those the pass looks up after the passes before it ran (here a prune
    that changes the widths and a to-dtype), so a DB measured on exactly them decides every layer."""
    from sparsec.api import resolve_target

    tgt = resolve_target("h100-sparse")
    before = {k: v.clone() for k, v in mlp.gm.state_dict().items()}
    prefix = "prune-channels{ratio=0.5,round-to=8},dce,to-dtype{dtype=bf16}"
    shapes = shapes_to_tune(mlp, f"{prefix},sparsify-2-4", tgt)
    pruned = mlp.clone()
    sparsec.PassManager.parse(prefix).run(pruned)
    weights = [pruned.get_param(n.target) for n in pruned.nodes("get_attr") if n.target.endswith(".weight")]
    assert shapes == [GemmShape(w.shape[0], w.shape[1], 64, "bf16") for w in weights]
    assert shapes[0].m < 512  # the pruned width, not the model's own
    assert all(torch.equal(v, mlp.gm.state_dict()[k]) for k, v in before.items())  # the input is not changed
    db = _write(tmp_path / "db.json", [_entry(s.m, s.n, s.k, 10.0, 5.0, dtype="bf16") for s in shapes])
    records = sparsec.PassManager.parse(f'{prefix},sparsify-2-4{{tuning-db="{db}"}}').run(
        mlp.clone(), sparsec.PassContext(target=tgt))
    assert records[-1].stats["sparse"] == len(shapes) and records[-1].stats["dense"] == 0


def test_shapes_to_tune_needs_a_measured_sparsify(mlp):
    from sparsec.api import resolve_target
    from sparsec.errors import PipelineError

    tgt = resolve_target("h100-sparse")
    with pytest.raises(PipelineError, match="has no sparsify-2-4 pass"):
        shapes_to_tune(mlp, "dce", tgt)
    with pytest.raises(PipelineError, match="decides with cost-model=shape: it reads no tuning DB"):
        shapes_to_tune(mlp, "sparsify-2-4{cost-model=shape}", tgt)
