"""DDP under a torchrun-style environment: 2 CPU processes with gloo."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from .util import SmallCNN, synthetic


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from sparsec.passes.finetune import FinetuneConfig, finetune

    x, y = synthetic(128, seed=0)
    ds = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    net = SmallCNN()
    # rank 1 is given its own output paths: they must stay unwritten
    cfg = FinetuneConfig(epochs=2, lr=0.05, device="cpu", progress=False, log_every=1,
                         checkpoint_dir=os.path.join(tmp, f"ck{rank}"), metrics_path=os.path.join(tmp, f"m{rank}.json"))
    res = finetune(net, ds, ds, config=cfg, batch_size=16)
    torch.save({"state": net.state_dict(), "steps": res.steps, "val": res.val,
                "world": dist.get_world_size()}, os.path.join(tmp, f"result{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == 8  # 128 samples / (16 per rank x 2 ranks) = 4 steps per epoch
    for k, v in r0["state"].items():  # DDP keeps the replicas identical
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(v, r1["state"][k]), k
    torch.manual_seed(0)
    initial = SmallCNN().state_dict()
    assert not torch.equal(r0["state"]["c1.weight"], initial["c1.weight"])
    assert r0["val"] == r1["val"] and r0["val"]["n"] == 128  # sharded evaluation, sums reduced over ranks
    assert (tmp_path / "ck0" / "last.pt").is_file() and (tmp_path / "m0.json").is_file()
    assert not (tmp_path / "ck1").exists() and not (tmp_path / "m1.json").exists()  # only rank 0 writes
    hist = json.loads((tmp_path / "m0.json").read_text())["history"]
    assert [h["step"] for h in hist if "loss" in h] == list(range(1, 9))
