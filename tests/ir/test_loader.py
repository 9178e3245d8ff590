"""Model loading: every input kind, detected by content, and every bad input's message."""

from __future__ import annotations

import sys
import textwrap
import zipfile

import pytest
import torch
from torch import nn

from sparsec.errors import LoadError, TraceError, UsageError
from sparsec.ir.loader import load_model, parse_input_shape, sniff, zoo_input_shape


def tiny() -> nn.Module:
    # only torch classes, so torch.save(model) needs no test module on reload
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert ((a - b).norm() / b.norm()).item() <= rtol


def _write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


# -- input shapes -------------------------------------------------------------------


@pytest.mark.parametrize("text, shape", [("1,3,224,224", (1, 3, 224, 224)), ("1x3x32x32", (1, 3, 32, 32)),
                                         (" 2 , 5 ", (2, 5)), ("7", (7,)), ("1X3", (1, 3))])
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "a,b", "1,,3", "1.5,2", "1;3", "1,3,"])
def test_parse_input_shape_malformed(text):
    with pytest.raises(UsageError, match=r"bad input shape") as e:
        parse_input_shape(text)
    assert "1,3,224,224 or 1x3x224x224" in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("text", ["1,0,3", "1,-3,4"])
def test_parse_input_shape_nonpositive(text):
    with pytest.raises(UsageError, match=r"every dimension must be positive"):
        parse_input_shape(text)


def test_input_shape_tuple_with_zero_is_rejected(tmp_path):
    with pytest.raises(UsageError, match="every dimension must be positive"):
        load_model("zoo:torchvision/resnet18", input_shape=(1, 0, 32, 32))


# -- missing, directory, garbage ------------------------------------------------------------


def test_missing_file(tmp_path):
    p = tmp_path / "nope.pt2"
    with pytest.raises(LoadError, match=r"model file '.*nope.pt2' not found") as e:
        load_model(str(p))
    assert "no such file" in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(LoadError, match=r"is a directory, not a model file"):
        load_model(str(tmp_path))


def test_random_bytes(tmp_path):
    p = tmp_path / "model.pt2"
    p.write_bytes(bytes(range(1, 200)))
    with pytest.raises(LoadError, match=r"is not a model sparsec can read") as e:
        load_model(str(p))
    assert "unrecognised content (first bytes" in str(e.value)
    assert str(p) in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"")
    with pytest.raises(LoadError, match=r"an empty file"):
        load_model(str(p))


@pytest.fixture
def pt2(tmp_path):
    model, x = tiny(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    return path, model


def test_truncated_pt2(pt2):
    path, _ = pt2
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=r"a truncated or damaged zip archive"):
        load_model(str(path))


def test_corrupt_pt2(pt2, tmp_path):
    path, _ = pt2
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, b"{not json" if info.filename.endswith("models/model.json") else data)
    with pytest.raises(LoadError, match=r"looks like a torch.export program but could not be loaded") as e:
        load_model(str(bad))
    assert "re-export it" in str(e.value)


# -- .pt2 --------------------------------------------------------------------------------------


def test_sniff_by_content_not_name(pt2, tmp_path):
    path, _ = pt2
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(path.read_bytes())
    assert sniff(renamed)[0] == "pt2"


def test_pt2_static(pt2):
    path, model = pt2
    mod = load_model(str(path))
    assert mod.name == "tiny"
    assert mod.dynamic_shapes is None
    assert [tuple(x.shape) for x in mod.example_inputs] == [(2, 3, 8, 8)]
    x = torch.randn(2, 3, 8, 8)
    _close(mod(x), model(x))


def test_pt2_dynamic_batch_is_kept(tmp_path):
    model = tiny()
    path = tmp_path / "dyn.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (torch.randn(4, 3, 8, 8),), dynamic_shapes=({0: batch},)), str(path))
    mod = load_model(str(path))
    assert mod.dynamic_shapes is not None
    assert mod.example_inputs[0].shape[0] >= 2
    x = torch.randn(5, 3, 8, 8)
    _close(mod(x), model(x))


def test_pt2_input_shape_mismatch(pt2):
    path, _ = pt2
    with pytest.raises(UsageError, match=r"--input-shape does not fit the program") as e:
        load_model(str(path), input_shape=(3, 3, 8, 8))
    assert "(2, 3, 8, 8)" in str(e.value)


def test_pt2_static_with_dynamic_batch(pt2):
    path, _ = pt2
    with pytest.raises(UsageError, match=r"exported with a static batch size"):
        load_model(str(path), dynamic_batch=True)


def test_pt2_dtype_fp16(pt2):
    path, _ = pt2
    mod = load_model(str(path), dtype="fp16")
    assert mod.example_inputs[0].dtype == torch.float16
    weights = [mod.get_param(n.target) for n in mod.nodes("get_attr")]
    assert weights and all(w.dtype == torch.float16 for w in weights if w.is_floating_point())


def test_pt2_keeps_its_own_dtype_by_default(tmp_path):
    # A program saved in fp16 (e.g. after to-dtype) loads as fp16 unless --dtype says otherwise.
    model, x = tiny().half(), torch.randn(2, 3, 8, 8).half()
    path = tmp_path / "half.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    for shape in (None, (2, 3, 8, 8)):
        mod = load_model(str(path), input_shape=shape)
        assert mod.example_inputs[0].dtype == torch.float16
        x = torch.randn(mod.example_inputs[0].shape).half()
        _close(mod.gm(x).float(), model(x).float(), rtol=1e-3)
    assert load_model(str(path), dtype="fp32").example_inputs[0].dtype == torch.float32


def test_bad_dtype(pt2):
    path, _ = pt2
    with pytest.raises(UsageError, match=r"unknown dtype 'fp13'"):
        load_model(str(path), dtype="fp13")


# -- pickles and state dicts ----------------------------------------------------------------------


def test_pickle_without_trust(tmp_path):
    p = tmp_path / "model.pth"
    torch.save(tiny(), p)
    with pytest.raises(LoadError, match=r"loading a pickle runs arbitrary code") as e:
        load_model(str(p), input_shape=(1, 3, 8, 8))
    msg = str(e.value)
    assert "--trust-pickle" in msg
    assert 'torch.export.save(torch.export.export(model, (x,)), "model.pt2")' in msg
    assert "torch.nn.modules.container.Sequential" in msg


def test_legacy_pickle_without_trust(tmp_path):
    p = tmp_path / "model.pth"
    torch.save(tiny(), p, _use_new_zipfile_serialization=False)
    assert p.read_bytes()[:1] == b"\x80"
    with pytest.raises(LoadError, match=r"loading a pickle runs arbitrary code"):
        load_model(str(p), input_shape=(1, 3, 8, 8))


def test_pickle_with_trust(tmp_path):
    model = tiny()
    p = tmp_path / "model.pth"
    torch.save(model, p)
    mod = load_model(str(p), input_shape=(1, 3, 8, 8), trust_pickle=True)
    assert mod.name == "model"
    x = torch.randn(1, 3, 8, 8)
    _close(mod(x), model(x))


def test_pickle_with_trust_not_a_module(tmp_path):
    p = tmp_path / "thing.pth"
    torch.save({"net": nn.Linear(2, 2)}, p)
    with pytest.raises(LoadError, match=r"holds dict, not an nn.Module"):
        load_model(str(p), input_shape=(1, 2), trust_pickle=True)


def test_pickle_with_missing_class(tmp_path):
    p = tmp_path / "model.pth"
    # a pickle naming a class that does not exist here
    torch.save(tiny(), p)
    with zipfile.ZipFile(p) as src:
        entries = {i.filename: src.read(i.filename) for i in src.infolist()}
    key = next(k for k in entries if k.endswith("data.pkl"))
    entries[key] = entries[key].replace(b"torch.nn.modules.container", b"torch.nn.modules.containex")
    with zipfile.ZipFile(p, "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    with pytest.raises(LoadError, match=r"unpickling '.*model.pth' failed") as e:
        load_model(str(p), input_shape=(1, 3, 8, 8), trust_pickle=True)
    assert "must be importable" in str(e.value)


def test_state_dict_without_arch(tmp_path):
    p = tmp_path / "weights.pth"
    torch.save(tiny().state_dict(), p)
    with pytest.raises(LoadError, match=r"is a state dict \(weights only\), with no architecture") as e:
        load_model(str(p))
    assert "--arch zoo:torchvision/NAME" in str(e.value)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():  # non-trivial BN statistics, so the weights really matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    p = tmp_path_factory.mktemp("sd") / "r18.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, p)
    return p, model


def test_state_dict_with_arch(resnet18_weights):
    p, model = resnet18_weights
    mod = load_model(str(p), arch="zoo:torchvision/resnet18", input_shape=(1, 3, 32, 32))
    assert mod.name == "resnet18"
    x = torch.randn(2, 3, 32, 32)
    _close(mod(x[:1]), model(x[:1]))


def test_state_dict_wrong_arch(resnet18_weights):
    p, _ = resnet18_weights
    with pytest.raises(LoadError, match=r"does not fit the architecture 'zoo:torchvision/alexnet'") as e:
        load_model(str(p), arch="zoo:torchvision/alexnet", input_shape=(1, 3, 64, 64))
    assert "missing classifier.1.bias" in str(e.value) and "unexpected bn1." in str(e.value)


def test_state_dict_with_factory_arch(tmp_path):
    model = tiny()
    p = tmp_path / "w.pth"
    torch.save(model.state_dict(), p)
    f = _write(tmp_path / "net.py", """
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    """)
    mod = load_model(str(p), arch=f"{f}:build", input_shape=(1, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    _close(mod(x), model(x))


def test_torchscript(tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(tiny(), torch.randn(1, 3, 8, 8)), str(p))
    with pytest.raises(LoadError, match=r"is a TorchScript archive, which cannot be turned into an FX graph") as e:
        load_model(str(p), input_shape=(1, 3, 8, 8))
    msg = str(e.value)
    assert "torch.export" in msg and "sparsec compile file.py:factory" in msg


# -- file.py:factory -----------------------------------------------------------------------------


def test_factory_with_example_inputs(tmp_path):
    f = _write(tmp_path / "mynet.py", """
        import torch
        from torch import nn
        def make_net():
            torch.manual_seed(1)
            return nn.Sequential(nn.Linear(6, 4), nn.ReLU())
        def example_inputs():
            return (torch.randn(3, 6),)
    """)
    mod = load_model(f"{f}:make_net")
    assert mod.name == "make_net"
    assert tuple(mod.example_inputs[0].shape) == (3, 6)
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    x = torch.randn(3, 6)
    _close(mod(x), ref(x))


def test_factory_needs_input_shape(tmp_path):
    f = _write(tmp_path / "net.py", """
        from torch import nn
        def build():
            return nn.Linear(6, 4)
    """)
    with pytest.raises(UsageError, match=r"no input shape for") as e:
        load_model(f"{f}:build")
    assert "--input-shape" in str(e.value)
    assert tuple(load_model(f"{f}:build", input_shape=(2, 6)).example_inputs[0].shape) == (2, 6)


def test_factory_returns_non_module(tmp_path):
    f = _write(tmp_path / "net.py", """
        def build():
            return 42
    """)
    with pytest.raises(LoadError, match=r"did not return an nn.Module") as e:
        load_model(f"{f}:build", input_shape=(1, 2))
    assert "actual:   int" in str(e.value)


def test_factory_missing_function(tmp_path):
    f = _write(tmp_path / "net.py", """
        from torch import nn
        def build_model():
            return nn.Linear(2, 2)
    """)
    with pytest.raises(LoadError, match=r"has no function 'build_modle'") as e:
        load_model(f"{f}:build_modle", input_shape=(1, 2))
    assert "did you mean build_model" in str(e.value)


def test_factory_file_missing(tmp_path):
    with pytest.raises(LoadError, match=r"model file '.*absent.py' not found"):
        load_model(f"{tmp_path / 'absent.py'}:build", input_shape=(1, 2))


def test_factory_import_error(tmp_path):
    f = _write(tmp_path / "broken.py", "import not_a_module_anywhere\n")
    with pytest.raises(LoadError, match=r"importing '.*broken.py' failed") as e:
        load_model(f"{f}:build", input_shape=(1, 2))
    assert "ModuleNotFoundError" in str(e.value)


def test_data_dependent_model(tmp_path):
    f = _write(tmp_path / "branchy.py", """
        import torch
        from torch import nn
        class Branchy(nn.Module):
            def forward(self, x):
                if x.sum() > 0:
                    return x * 2
                return x - 1
        def build():
            return Branchy()
    """)
    with pytest.raises(TraceError, match=r"its control flow depends on tensor values") as e:
        load_model(f"{f}:build", input_shape=(2, 3))
    assert "torch.cond" in str(e.value)


# -- the zoo ----------------------------------------------------------------------------------------


def test_zoo_resnet18():
    mod = load_model("zoo:torchvision/resnet18", input_shape=(1, 3, 32, 32))
    assert mod.name == "resnet18"
    assert tuple(mod.example_inputs[0].shape) == (1, 3, 32, 32)
    assert any(n.target == torch.ops.aten.conv2d.default for n in mod.nodes("call_function"))


def test_zoo_default_shapes():
    assert zoo_input_shape("resnet18") == (1, 3, 224, 224)
    assert zoo_input_shape("inception_v3") == (1, 3, 299, 299)
    assert zoo_input_shape("r3d_18") == (1, 3, 16, 112, 112)
    assert zoo_input_shape("fasterrcnn_resnet50_fpn") is None


def test_zoo_unknown_name():
    with pytest.raises(LoadError, match=r"unknown torchvision model 'resnet81'") as e:
        load_model("zoo:torchvision/resnet81")
    assert "did you mean" in str(e.value) and "resnet18" in str(e.value)


def test_zoo_bad_source():
    with pytest.raises(LoadError, match=r"bad zoo spec 'zoo:timm/resnet18'") as e:
        load_model("zoo:timm/resnet18")
    assert "zoo:torchvision/NAME" in str(e.value)


def test_zoo_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(LoadError, match=r"needs torchvision, which is not installed") as e:
        load_model("zoo:torchvision/resnet18")
    assert "pip install 'sparsec[zoo]'" in str(e.value)


def test_unknown_tracer(pt2):
    path, _ = pt2
    with pytest.raises(UsageError, match=r"unknown tracer 'jit'") as e:
        load_model(str(path), tracer="jit")
    assert "export, symbolic" in str(e.value)


def test_symbolic_tracer_on_factory(tmp_path):
    f = _write(tmp_path / "net.py", """
        import torch
        from torch import nn
        def build():
            torch.manual_seed(2)
            return nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    """)
    mod = load_model(f"{f}:build", input_shape=(2, 6), tracer="symbolic")
    torch.manual_seed(2)
    ref = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    x = torch.randn(2, 6)
    _close(mod(x), ref(x))


def test_dynamic_batch_factory(tmp_path):
    f = _write(tmp_path / "net.py", """
        import torch
        from torch import nn
        def build():
            torch.manual_seed(3)
            return nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    """)
    mod = load_model(f"{f}:build", input_shape=(1, 6), dynamic_batch=True)
    assert mod.dynamic_shapes is not None
    torch.manual_seed(3)
    ref = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    x = torch.randn(5, 6)
    _close(mod(x), ref(x))
