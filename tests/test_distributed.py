"""torchrun sharding: 2 gloo CPU ranks give exactly the 1-rank totals; DDP training equals one process's full batch."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from snn_adv.distributed import shard_batches, sharded_counts

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch.utils.data import TensorDataset
    from snn_adv.distributed import init_distributed, sharded_counts, wrap_ddp, distributed_loader, shutdown_distributed

    def count(x, y, seed):
        # a noisy "classifier": its randomness comes only from the per-batch seed, as an attack's would
        g = torch.Generator().manual_seed(seed)
        pred = (x + 0.5 * torch.randn(x.shape, generator=g)).sum(1).gt(0).long()
        return {"correct": int((pred == y).sum()), "total": len(y), "batches": 1}

    info = init_distributed()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(203, 5, generator=g)
    labels = (images.sum(1) > 0).long()
    counts = sharded_counts(count, images, labels, batch_size=16, seed=7, progress=False)

    # DDP: 3 SGD steps of a linear model on a global batch of 8
    torch.manual_seed(1)
    model = wrap_ddp(torch.nn.Linear(5, 2))
    loader, sampler = distributed_loader(TensorDataset(images[:64], labels[:64]), 8, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sampler.set_epoch(0)
    for step, (x, y) in zip(range(3), loader):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    weights = [p.detach().flatten().tolist() for p in model.parameters()]
    if info.is_main:
        json.dump({"counts": counts, "world": info.world_size, "weights": weights}, open(sys.argv[1], "w"))
    shutdown_distributed()
    """
)


def _run(tmp_path, nproc):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out{nproc}.json"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # subprocesses import this checkout
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    if nproc == 1:
        cmd = [sys.executable, str(script), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_gloo_ranks_give_the_one_rank_totals_and_ddp_matches_full_batch(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert (one["world"], two["world"]) == (1, 2)
    assert one["counts"]["total"] == 203 and one["counts"]["batches"] == 13
    assert two["counts"] == one["counts"]
    for w1, w2 in zip(one["weights"], two["weights"]):
        assert torch.allclose(torch.tensor(w1), torch.tensor(w2), atol=1e-6)


def test_shards_partition_the_batches():
    n, bs, world = 103, 10, 3
    seen = sorted(i for r in range(world) for _, s, e in shard_batches(n, bs, r, world) for i in range(s, e))
    assert seen == list(range(n))
    assert [b for b, _, _ in shard_batches(n, bs, 1, world)] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="rank"):
        shard_batches(n, bs, 3, world)


def test_single_process_counts_match_a_hand_loop():
    images, labels = torch.arange(10.0).unsqueeze(1), torch.arange(10) % 2
    counts = sharded_counts(lambda x, y, s: {"odd": int(y.sum()), "seedsum": s % 2}, images, labels,
                            batch_size=3, seed=0, progress=False)
    assert counts["odd"] == 5
    from snn_adv.seeds import derive_seed

    assert counts["seedsum"] == sum(derive_seed(0, b) % 2 for b in range(4))
