"""DistributedDataParallel on two CPU processes (gloo, loopback only): training under
``torch.compile(backend="fx_fuse")`` matches eager DDP, with the model in one bucket (one
graph) and with buckets small enough that DDP's graph optimizer splits the graph."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

import models

TESTS = Path(__file__).resolve().parent

WORKER = textwrap.dedent(
    """
    import copy, json, os, sys
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch._dynamo.utils import counters
    from torch.nn.parallel import DistributedDataParallel as DDP
    sys.path.insert(0, sys.argv[1])
    import models
    from fx_fuse.backend import fx_fuse_backend

    dist.init_process_group("gloo")  # env:// rendezvous on 127.0.0.1
    rank = dist.get_rank()
    report = {"rank": rank}
    # (width, bucket_cap_mb): a 0.13 MB model in one bucket, and a 4.7 MB one in 1 MB ones.
    for width, bucket_cap_mb in ((8, 25.0), (48, float(sys.argv[2]))):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)  # the same initial weights on both ranks
        base = models.ResNetLike(width=width)
        eager = DDP(copy.deepcopy(base), bucket_cap_mb=bucket_cap_mb)
        fused_module = DDP(copy.deepcopy(base), bucket_cap_mb=bucket_cap_mb)
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return fx_fuse_backend(gm, example_inputs, options={"inner": "aot_eager"})

        compiled = torch.compile(fused_module, backend=backend)
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
                      for m in (eager, fused_module)]
        torch.manual_seed(100 + rank)  # each rank its own data
        losses = {"eager": [], "fx_fuse": []}
        for step in range(3):
            x = torch.randn(4, 3, 16, 16)
            y = torch.randint(0, 10, (4,))
            for name, model, opt in zip(losses, (eager, compiled), optimizers):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses[name].append(loss.item())
        max_param_diff = max(
            (p - q).abs().max().item()
            for p, q in zip(eager.parameters(), fused_module.parameters())
        )
        # This rank's final parameters, summed: the two ranks must agree.
        checksum = sum(p.double().sum().item() for p in fused_module.parameters())
        report[str(bucket_cap_mb)] = dict(
            params_mb=sum(p.numel() * 4 for p in base.parameters()) / 2**20,
            losses=losses, max_param_diff=max_param_diff, checksum=checksum,
            graphs=len(graphs), fused=counters["fx_fuse"]["fused"],
            refused=counters["fx_fuse"]["refused"],
        )
    print("REPORT " + json.dumps(report))
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ResNetLike has 5 fusable sites and one refused. At width 8 it holds 0.13 MB of
# parameters: one bucket, one graph. At width 48 it holds 4.7 MB, so 1 MB buckets (the
# smallest DDPOptimizer accepts: its first bucket is always
# torch.distributed._DEFAULT_FIRST_BUCKET_BYTES = 1 MB) split its graph several times.
SMALL_BUCKET_MB = 1.0


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_two_processes_match_eager_ddp():
    port = _free_port()
    env_base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(TESTS), str(SMALL_BUCKET_MB)],
            env={**env_base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-4000:]
            line = next(l for l in out.splitlines() if l.startswith("REPORT "))
            reports.append(json.loads(line[len("REPORT "):]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    print(json.dumps(reports, indent=1))  # shown by pytest on failure
    for report in reports:
        for cap in ("25.0", str(SMALL_BUCKET_MB)):
            run = report[cap]
            for eager_loss, fused_loss in zip(run["losses"]["eager"], run["losses"]["fx_fuse"]):
                assert fused_loss == pytest.approx(eager_loss, rel=1e-5, abs=1e-6), (cap, run)
            assert run["max_param_diff"] < 1e-5, (cap, run)
        one_bucket, split = report["25.0"], report[str(SMALL_BUCKET_MB)]
        # One bucket: one graph, every site seen as in the single-process model.
        assert one_bucket["graphs"] == 1
        assert one_bucket["fused"] == models.ResNetLike.expected_fused  # 5
        assert one_bucket["refused"] == models.ResNetLike.expected_refused  # 1
        # Small buckets: DDP's optimizer hands the backend several graphs. A boundary can
        # fall between a site's relu and its add (a shortcut conv runs in between), and
        # then that site is no candidate: at most 5 fuse and 1 is refused.
        assert split["params_mb"] > 4 and split["graphs"] > 2
        assert 1 <= split["fused"] <= 5 and split["refused"] <= 1
    # DDP keeps the replicas identical.
    for cap in ("25.0", str(SMALL_BUCKET_MB)):
        assert reports[0][cap]["checksum"] == pytest.approx(reports[1][cap]["checksum"], rel=1e-9)
