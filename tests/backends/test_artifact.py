"""Artifacts: layout, manifest, atomic writes, --force, and load-time checks."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from torch import nn

from sparsec.backends.artifact import FORMAT_VERSION, load_artifact, write_artifact
from sparsec.errors import ArtifactError
from sparsec.ir.analysis import Cost
from sparsec.ir.trace import trace
from sparsec.registry import registry


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _mod(seed: int = 0, **kw):
    return trace(_net(seed), (torch.randn(1, 3, 8, 8),), name="net", **kw)


@pytest.fixture
def cpu():
    return registry().get("target", "cpu")


def _close(a, b, rtol=1e-5):
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert ((a - b).norm() / b.norm()).item() <= rtol


def _leftovers(parent, dest_name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{dest_name}."))


def test_write_and_load_round_trip(tmp_path, cpu):
    mod = _mod()
    out = write_artifact(tmp_path / "net.sparsec", mod, target=cpu, pipeline="canonicalize,dce")
    assert out == tmp_path / "net.sparsec"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "program.pt2"]
    assert _leftovers(tmp_path, "net.sparsec") == []
    loaded, manifest = load_artifact(out)
    x = torch.randn(1, 3, 8, 8)
    _close(loaded(x), _net()(x))
    assert manifest["format_version"] == FORMAT_VERSION


def test_manifest_contents(tmp_path, cpu):
    from sparsec.passes.manager import PassRecord

    mod = _mod()
    rec = PassRecord("dce", "dce", False, True, 0.01, {"removed": 2})
    out = write_artifact(tmp_path / "net.sparsec", mod, target=cpu, pipeline="dce", records=[rec])
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "sparsec-artifact"
    assert set(m["versions"]) == {"sparsec", "torch", "cuda", "python"}
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["cuda"] == torch.version.cuda
    assert m["created"].endswith("+00:00")
    assert m["target"] == cpu.summary()
    assert m["pipeline"] == "dce"
    assert m["passes"] == [{"name": "dce", "text": "dce", "skipped": False, "modified": True,
                            "seconds": 0.01, "stats": {"removed": 2}}]
    assert m["inputs"] == {"dynamic_batch": False, "tensors": [
        {"name": mod.placeholders()[0].name, "shape": [1, 3, 8, 8], "example_shape": [1, 3, 8, 8], "dtype": "f32", "dynamic_dims": {}}]}
    by_op = {n["op"]: n for n in m["nodes"]}
    cost = mod.analysis(Cost)
    conv = by_op["aten.conv2d"]
    assert conv["output"] == "f32[1,8,8,8]"
    assert conv["macs"] == 8 * 8 * 8 * 3 * 3 * 3 and conv["params"] == 8 * 3 * 9 + 8
    assert m["totals"]["macs"] == cost.total_macs and m["totals"]["params"] == cost.total_params
    assert m["totals"]["flops"] == 2 * cost.total_macs
    digest = hashlib.sha256((out / "program.pt2").read_bytes()).hexdigest()
    assert m["files"] == {"program.pt2": digest}
    assert m["content_hash"] == hashlib.sha256(f"program.pt2 {digest}\n".encode()).hexdigest()


def test_dynamic_batch_artifact(tmp_path, cpu):
    mod = _mod(dynamic_batch=True)
    out = write_artifact(tmp_path / "dyn.sparsec", mod, target=cpu, pipeline="")
    loaded, m = load_artifact(out)
    assert m["inputs"]["dynamic_batch"] is True
    t = m["inputs"]["tensors"][0]
    assert t["shape"] == ["batch", 3, 8, 8]
    assert t["dynamic_dims"]["0"]["name"] == "batch" and t["dynamic_dims"]["0"]["min"] == 1
    x = torch.randn(3, 3, 8, 8)
    _close(loaded(x), _net()(x))


def test_existing_output_without_force(tmp_path, cpu):
    out = write_artifact(tmp_path / "net.sparsec", _mod(), target=cpu, pipeline="")
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ArtifactError, match=r"output '.*net.sparsec' already exists") as e:
        write_artifact(out, _mod(1), target=cpu, pipeline="")
    assert "--force" in str(e.value)
    assert (out / "manifest.json").read_bytes() == before


def test_force_replaces(tmp_path, cpu):
    out = write_artifact(tmp_path / "net.sparsec", _mod(0), target=cpu, pipeline="")
    write_artifact(out, _mod(1), target=cpu, pipeline="", force=True)
    assert _leftovers(tmp_path, "net.sparsec") == []
    loaded, _ = load_artifact(out)
    x = torch.randn(1, 3, 8, 8)
    _close(loaded(x), _net(1)(x))


def test_force_refuses_non_artifact_directory(tmp_path, cpu):
    user_dir = tmp_path / "results"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"refusing to replace '.*results': it is a directory that is not a sparsec artifact"):
        write_artifact(user_dir, _mod(), target=cpu, pipeline="", force=True)
    assert (user_dir / "notes.txt").read_text() == "keep me"


def test_force_never_touches_the_model_file(tmp_path, cpu):
    model_file = tmp_path / "model.pt2"
    model_file.write_bytes(b"the user's model")
    with pytest.raises(ArtifactError, match=r"refusing to replace '.*model.pt2': it is a file"):
        write_artifact(model_file, _mod(), target=cpu, pipeline="", force=True)
    assert model_file.read_bytes() == b"the user's model"


def test_failure_mid_write_leaves_nothing(tmp_path, cpu, monkeypatch):
    real_save = torch.export.save

    def half_save(ep, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.export, "save", half_save)
    with pytest.raises(ArtifactError, match=r"writing the artifact '.*net.sparsec' failed; nothing was written") as e:
        write_artifact(tmp_path / "net.sparsec", _mod(), target=cpu, pipeline="")
    assert "No space left on device" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch.export, "save", real_save)


def test_failure_mid_force_keeps_old_artifact(tmp_path, cpu, monkeypatch):
    out = write_artifact(tmp_path / "net.sparsec", _mod(0), target=cpu, pipeline="")

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr("sparsec.backends.artifact.build_manifest", broken)
    with pytest.raises(ArtifactError, match=r"nothing was written"):
        write_artifact(out, _mod(1), target=cpu, pipeline="", force=True)
    assert _leftovers(tmp_path, "net.sparsec") == []
    loaded, _ = load_artifact(out)
    x = torch.randn(1, 3, 8, 8)
    _close(loaded(x), _net(0)(x))


def test_unwritable_parent(tmp_path, cpu):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match=r"cannot write the artifact: the directory '.*afile' is not writable"):
        write_artifact(blocker / "net.sparsec", _mod(), target=cpu, pipeline="")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent(tmp_path, cpu):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ArtifactError, match=r"is not writable"):
            write_artifact(ro / "net.sparsec", _mod(), target=cpu, pipeline="")
    finally:
        ro.chmod(0o700)


# -- load-time checks ---------------------------------------------------------------------


@pytest.fixture
def artifact(tmp_path, cpu):
    return write_artifact(tmp_path / "net.sparsec", _mod(), target=cpu, pipeline="")


def test_flipped_byte_is_caught(artifact):
    prog = artifact / "program.pt2"
    data = bytearray(prog.read_bytes())
    data[len(data) // 2] ^= 0xFF
    prog.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"artifact file 'program.pt2' does not match its hash in the manifest") as e:
        load_artifact(artifact)
    assert "compile the model again" in str(e.value)


def test_missing_program(artifact):
    (artifact / "program.pt2").unlink()
    with pytest.raises(ArtifactError, match=r"artifact file 'program.pt2' is missing"):
        load_artifact(artifact)


def _edit_manifest(artifact, **changes):
    p = artifact / "manifest.json"
    m = json.loads(p.read_text())
    m.update(changes)
    p.write_text(json.dumps(m))
    return m


def test_content_hash_mismatch(artifact):
    _edit_manifest(artifact, content_hash="0" * 64)
    with pytest.raises(ArtifactError, match=r"the content hash of '.*net.sparsec' does not match its files"):
        load_artifact(artifact)


def test_newer_format_version(artifact):
    _edit_manifest(artifact, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match=r"newer than this sparsec reads") as e:
        load_artifact(artifact)
    assert "upgrade sparsec" in str(e.value)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match=r"artifact '.*nothing.sparsec' not found"):
        load_artifact(tmp_path / "nothing.sparsec")
    (tmp_path / "empty.sparsec").mkdir()
    with pytest.raises(ArtifactError, match=r"has no manifest.json"):
        load_artifact(tmp_path / "empty.sparsec")
    (tmp_path / "f.sparsec").write_text("x")
    with pytest.raises(ArtifactError, match=r"is not a sparsec artifact"):
        load_artifact(tmp_path / "f.sparsec")


def test_garbled_manifest(artifact):
    (artifact / "manifest.json").write_text("{nope")
    with pytest.raises(ArtifactError, match=r"the manifest of '.*' is unreadable"):
        load_artifact(artifact)


def test_target_backend_missing_here(artifact):
    summary = dict(registry().get("target", "h100-sparse").summary(), backend="cuda-next")
    _edit_manifest(artifact, target=summary)
    with pytest.raises(ArtifactError, match=r"compiled for target 'h100-sparse' on backend 'cuda-next', which this version of sparsec does not have"):
        load_artifact(artifact)
