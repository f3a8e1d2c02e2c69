"""Data-parallel training under torchrun: 2 CPU processes with gloo (flowforge.train.distributed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from flowforge.train import Run, load_checkpoint, load_safetensors, train

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import torch
    import torch.distributed as dist
    from torch import nn

    from flowforge.train import save_safetensors, train

    STEPS = 20
    KW = dict(steps=STEPS, batch_size=16, lr=1e-2, warmup=2, log_every=5, ckpt_every=10, seed=3,
              progress=False, device="cpu")


    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            # each process starts from different weights: DDP must broadcast rank 0's
            g = torch.Generator().manual_seed(int(os.environ.get("RANK", "0")))
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
            with torch.no_grad():
                for p in self.net.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)

        def loss(self, x):
            x0 = torch.randn_like(x)            # global RNG, as flow matching does
            t = torch.rand(x.shape[0], 1)
            v = self.net(torch.cat([t * x + (1 - t) * x0, t], dim=1))
            return ((v - (x - x0)) ** 2).mean()


    def data():
        return torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 1.0


    if __name__ == "__main__":
        out, mode = sys.argv[1], sys.argv[2]
        rank = int(os.environ["RANK"])
        run = train(Toy(), data(), out=f"{out}/{mode}", resume=mode == "cut", **KW)
        assert not dist.is_initialized(), "the process group was not destroyed"
        weights = {"model." + k: v for k, v in run.model.state_dict().items()}
        weights.update({"ema." + k: v for k, v in run.ema.state_dict().items()})
        save_safetensors(f"{out}/{mode}-rank{rank}.safetensors", weights)
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, out, mode: str) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        str(out),
        mode,
    ]
    # own session, so a hung launch is killed with all its workers
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun ({mode}) hung for 60 s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed + gloo"
)
def test_ddp_two_cpu_processes_synchronise_gradients(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    torchrun(script, tmp_path, "full")

    r0 = load_safetensors(tmp_path / "full-rank0.safetensors")
    r1 = load_safetensors(tmp_path / "full-rank1.safetensors")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"replicas disagree on {k}"

    # a single process trained on rank 0's stream alone ends elsewhere: gradients were averaged
    ns: dict = {"__name__": "ddp_script"}
    exec(compile(SCRIPT, "ddp_script", "exec"), ns)
    single = train(ns["Toy"](), ns["data"](), **ns["KW"]).model.state_dict()
    assert any(not torch.equal(v, r0["model." + k]) for k, v in single.items()), (
        "DDP gave rank 0's single-process result: gradients were not averaged"
    )
    untrained = ns["Toy"]().state_dict()
    assert any(not torch.equal(v, r0["model." + k]) for k, v in untrained.items())

    # rank 0 alone wrote the files: one metrics line per log step, RNG states of both ranks saved
    assert [m["step"] for m in Run(tmp_path / "full").metrics()] == [5, 10, 15, 20]
    ckpt = load_checkpoint(tmp_path / "full")
    assert ckpt.config["trainer"]["world_size"] == 2
    assert {k.split(".")[0] for k in ckpt.tensors["rng"]} == {"rank0", "rank1"}

    # a run killed after its step-10 checkpoint (it had logged to step 20) resumes bit for bit on both ranks
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "ckpt-000020")
    torchrun(script, tmp_path, "cut")
    for rank in (0, 1):
        cut = load_safetensors(tmp_path / f"cut-rank{rank}.safetensors")
        for k in r0:
            assert torch.equal(cut[k], r0[k]), f"resumed rank {rank} differs on {k}"
    assert [m["step"] for m in Run(tmp_path / "cut").metrics()] == [5, 10, 15, 20]
