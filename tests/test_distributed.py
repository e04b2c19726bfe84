"""torchrun sharding: 2 gloo CPU ranks give exactly the 1-rank evaluation; DDP training equals one process's full batch."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from snn_adv.distributed import shard_batches, sharded_evaluate

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch.utils.data import TensorDataset
    from functools import partial
    from snn_adv.attacks import PGD
    from snn_adv.distributed import init_distributed, sharded_evaluate, wrap_ddp, distributed_loader, shutdown_distributed
    from snn_adv.models import build_classifier

    info = init_distributed()
    torch.manual_seed(0)
    target, source = (build_classifier("vgg-tiny", "fashion-mnist-bundled").eval() for _ in range(2))
    spiking = build_classifier("vgg-tiny", "fashion-mnist-bundled", "snn", timesteps=4).eval()  # Poisson scoring draws
    images = torch.rand(43, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(43) % 10
    # PGD with a random start: crafting randomness must follow the batch, not the rank
    attack = partial(PGD, eps=0.1, alpha=0.05, steps=2, random_start=True)
    results = sharded_evaluate({"a": target, "b": source, "s": spiking}, images, labels, attack, source, seed=7,
                               scoring_seeds=[0, 1], batch_size=8, progress=False)
    outcomes = {k: [r.clean_correct.tolist(), r.adversarial_correct.tolist(), r.index.tolist()] for k, r in results.items()}

    # DDP: 3 SGD steps of a linear model on a global batch of 8
    torch.manual_seed(1)
    model = wrap_ddp(torch.nn.Linear(5, 2))
    data = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    loader, sampler = distributed_loader(TensorDataset(data, (data.sum(1) > 0).long()), 8, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sampler.set_epoch(0)
    for step, (x, y) in zip(range(3), loader):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    weights = [p.detach().flatten().tolist() for p in model.parameters()]
    if info.is_main:
        json.dump({"outcomes": outcomes, "world": info.world_size, "weights": weights}, open(sys.argv[1], "w"))
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
    assert one["outcomes"]["a"][2] == list(range(43))  # every image once, in order
    assert two["outcomes"] == one["outcomes"]
    for w1, w2 in zip(one["weights"], two["weights"]):
        assert torch.allclose(torch.tensor(w1), torch.tensor(w2), atol=1e-6)


def test_shards_partition_the_batches():
    n, bs, world = 103, 10, 3
    seen = sorted(i for r in range(world) for _, s, e in shard_batches(n, bs, r, world) for i in range(s, e))
    assert seen == list(range(n))
    assert [b for b, _, _ in shard_batches(n, bs, 1, world)] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="rank"):
        shard_batches(n, bs, 3, world)


def test_single_process_sharded_evaluation_equals_one_evaluate_call():
    from functools import partial

    from snn_adv.attacks import PGD
    from snn_adv.evaluation import evaluate
    from snn_adv.models import build_classifier

    torch.manual_seed(0)
    target, source = build_classifier("vgg-tiny", "fashion-mnist-bundled").eval(), build_classifier("vgg-tiny", "fashion-mnist-bundled").eval()
    images, labels = torch.rand(21, 1, 28, 28), torch.arange(21) % 10
    attack = partial(PGD, eps=0.1, alpha=0.05, steps=2, random_start=True)
    kwargs = dict(seed=3, scoring_seeds=[0, 1], batch_size=8, progress=False)
    sharded = sharded_evaluate({"t": target}, images, labels, attack, source, **kwargs)["t"]
    whole = evaluate({"t": target}, (images, labels), attack, source, **kwargs)["t"]
    assert sharded.index.tolist() == list(range(21))
    assert (sharded.clean_correct == whole.clean_correct).all()
    assert (sharded.adversarial_correct == whole.adversarial_correct).all()
