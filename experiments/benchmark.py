"""Cost of one attack step (forward + backward to the input) of a spiking VGG5 against T ANN steps.

For VGG5 on 3x32x32 images, one process, interleaved repeats (medians), weights not requiring grad:

* ``ours``:  :class:`~snn_adv.classifier.SpikingClassifier` with :class:`~snn_adv.neurons.LeakyLIFNode`
  (torch backend; on CUDA also the CuPy backend), in ``eval()`` as attacks run it, with its defaults (lean above
  ``LEAN_ABOVE_TIMESTEPS``); against the explicit settings, all with ``lean=False``: ``ours_torch_plain`` (nothing
  recomputed, all T at once), ``ours_torch_recompute`` (:func:`~snn_adv.models.recompute_currents`: input currents
  recomputed in the backward) and ``ours_torch_chunk<c>`` (``--time-chunks``);
* ``stock``: the same network with SpikingJelly's stock ``LIFNode`` and layers (multistep, torch backend; its
  neurons in ``train()``, since their ``eval()`` path has no gradient);
* ``ann``:   T times one ANN attack step of the same body.

Prints a readable table and one JSON object (``--out`` also writes it). ``--memory`` adds the peak memory of one
BPTT step (``--memory-timesteps``, default T = 100, ``--memory-batch`` 32; slow on CPU), each model in a fresh
process: CPU peak resident set above the pre-step level (Linux ``/proc/self/clear_refs``) and of the whole process,
CUDA ``max_memory_allocated``; ours also recomputing currents and run ``--memory-time-chunk`` timesteps at a time.

    python experiments/benchmark.py [--timesteps 4 8 16] [--batch 64] [--repeats 5] [--memory] [--out f.json] [--markdown f.md]

``--keep-heap`` reruns the process with glibc told to keep freed memory (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``): the large ``[T*N, ...]`` buffers of a multistep network are then
reused instead of being mapped fresh (page faults) on every step, the effect PyTorch's CPU tuning guide gets from
jemalloc or tcmalloc. It trades resident memory for speed, so it is not used with ``--memory``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron
from tqdm import tqdm

from snn_adv.classifier import AnnClassifier, SpikingClassifier
from snn_adv.encoding import PoissonEncoder
from snn_adv.io import atomic_write_json, provenance
from snn_adv.models import recompute_currents, spiking_twin, vgg5
from snn_adv.models.spiking import AvgPool2d, Conv2d, Linear
from snn_adv.neurons import LeakyLIFNode, PiecewiseLinear, cupy_available, spiking_neurons

LEAK, V_TH = 0.99, 1.0
KEEP_HEAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
                 "MALLOC_TOP_PAD_": str(1 << 30)}


def _backends(device: torch.device) -> List[str]:
    """Our neuron's backends to measure: torch, and CuPy on CUDA where it is installed."""
    return ["torch"] + (["cupy"] if device.type == "cuda" and cupy_available() else [])


def build_models(device: torch.device, timesteps: int, time_chunks: Sequence[int] = ()) -> Dict[str, nn.Module]:
    """ANN, our SNN (torch and, on CUDA, cupy backend; also run ``c`` timesteps at a time for each ``c`` of
    ``time_chunks``) and the stock-SpikingJelly SNN, all on one body."""
    torch.manual_seed(0)
    ann = vgg5(in_channels=3, num_classes=10, input_size=32).to(device).eval()
    ann.requires_grad_(False)
    norm = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
    models: Dict[str, nn.Module] = {"ann": AnnClassifier(ann, **norm).to(device).eval()}
    for backend in _backends(device):
        body = spiking_twin(ann, neuron_factory=lambda: LeakyLIFNode(LEAK, V_TH, PiecewiseLinear(), backend=backend))
        models[f"ours_{backend}"] = SpikingClassifier(body, PoissonEncoder(seed=0), timesteps, **norm).to(device).eval()
        if backend == "torch":  # the default (lean above LEAN_ABOVE_TIMESTEPS) against each explicit setting
            models["ours_torch_plain"] = SpikingClassifier(body, PoissonEncoder(seed=0), timesteps, lean=False,
                                                           **norm).to(device).eval()
            for chunk in time_chunks:
                models[f"ours_torch_chunk{chunk}"] = SpikingClassifier(
                    body, PoissonEncoder(seed=0), timesteps, time_chunk=chunk, lean=False, **norm).to(device).eval()
            recomputing = recompute_currents(spiking_twin(ann, neuron_factory=lambda: LeakyLIFNode(
                LEAK, V_TH, PiecewiseLinear(), backend=backend)))
            models["ours_torch_recompute"] = SpikingClassifier(recomputing, PoissonEncoder(seed=0), timesteps,
                                                               lean=False, **norm).to(device).eval()
    stock = spiking_twin(ann, neuron_factory=lambda: neuron.LIFNode(
        tau=1.0 / (1.0 - LEAK), decay_input=False, v_threshold=V_TH, v_reset=None,
        surrogate_function=PiecewiseLinear(), step_mode="m", backend="torch"))
    _use_spikingjelly_layers(stock)
    models["stock"] = SpikingClassifier(stock, PoissonEncoder(seed=0), timesteps, **norm).to(device).eval()
    for node in spiking_neurons(stock):
        node.train()  # the stock neuron's eval() path is a hard step without gradient; dropout stays off
    return models


def _use_spikingjelly_layers(net: nn.Module) -> None:
    """Swap our lean-saving ``AvgPool2d``, ``Conv2d`` and ``Linear`` back to SpikingJelly's (same parameters), so
    that ``stock`` is stock throughout."""
    for name, child in net.named_children():
        if isinstance(child, AvgPool2d):
            setattr(net, name, layer.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode,
                                               child.count_include_pad, child.divisor_override, step_mode="m"))
        elif isinstance(child, Conv2d):
            stock = layer.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, child.bias is not None, child.padding_mode, step_mode="m")
            stock.weight, stock.bias = child.weight, child.bias
            setattr(net, name, stock)
        elif isinstance(child, Linear):
            stock = layer.Linear(child.in_features, child.out_features, child.bias is not None, step_mode="m")
            stock.weight, stock.bias = child.weight, child.bias
            setattr(net, name, stock)
        else:
            _use_spikingjelly_layers(child)


def attack_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One PGD step's work: forward, cross-entropy, gradient with respect to the input."""
    x = images.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_steps(device: torch.device, timesteps: List[int], batch: int, repeats: int,
               time_chunks: Sequence[int] = ()) -> List[Dict]:
    """Median seconds per attack step for every model and T, repeats interleaved across models."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    rows = []
    for T in timesteps:
        models = build_models(device, T, time_chunks)
        samples: Dict[str, List[float]] = {name: [] for name in models}
        for name, model in models.items():  # warm-up (allocator, kernels, JIT)
            attack_step(model, images, labels)
        for _ in tqdm(range(repeats), desc=f"T={T}", file=sys.stderr):
            for name, model in models.items():
                samples[name].append(time_once(lambda: attack_step(model, images, labels), device))
        median = {name: statistics.median(s) for name, s in samples.items()}
        fastest = {name: min(s) for name, s in samples.items()}  # least disturbed by other load
        row = {"T": T, "batch": batch, "ann_step_s": median["ann"], "T_ann_steps_s": T * median["ann"]}
        for name in models:
            if name != "ann":
                row[f"{name}_s"] = median[name]
                row[f"{name}_ratio"] = median[name] / (T * median["ann"])
                row[f"{name}_ratio_of_min"] = fastest[name] / (T * fastest["ann"])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of ``fn`` above the level before it: CUDA allocator peak, or on CPU the resident-set peak
    (VmHWM, reset through ``/proc/self/clear_refs`` after returning freed heap to the system)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current VmRSS
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def _model_peak(name: str, device_name: str, timesteps: int, batch: int, time_chunk: int) -> Dict[str, float]:
    """One model's BPTT step in this (fresh) process: peak above the pre-step level, whole-process peak, seconds.
    ``<model>_chunked``: that model run ``time_chunk`` timesteps at a time."""
    device = torch.device(device_name)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    chunked = name.endswith("_chunked")
    model = build_models(device, timesteps).pop(name[:-len("_chunked")] if chunked else name)  # others freed
    if chunked:
        model.time_chunk = time_chunk
    reps = timesteps if name == "ann" else 1  # ann: T steps in sequence
    start = time.perf_counter()
    peak = peak_memory_mib(lambda: [attack_step(model, images, labels) for _ in range(reps)], device)
    seconds = time.perf_counter() - start
    process = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_kib("VmHWM") * 1024) / 2**20
    return {"peak_mib": peak, "process_peak_mib": process, "s": seconds}


def memory_rows(device: torch.device, timesteps: int = 100, batch: int = 32, time_chunk: int = 10) -> Dict:
    """Peak memory of one BPTT step per model, each model in a fresh process (so no model inherits another's heap);
    our torch backend also with currents recomputed, and both run ``time_chunk`` timesteps at a time."""
    import multiprocessing

    out: Dict = {"T": timesteps, "batch": batch, "time_chunk": time_chunk}
    explicit = ["ours_torch_plain", "ours_torch_recompute"]  # ours_torch: the default (lean at long T)
    names = ["ann", "ours_torch", *explicit, *(f"{n}_chunked" for n in explicit),
             *(f"ours_{b}" for b in _backends(device)[1:]), "stock"]
    context = multiprocessing.get_context("spawn")
    for name in tqdm(names, desc=f"memory T={timesteps}", file=sys.stderr):
        with context.Pool(1) as pool:
            result = pool.apply(_model_peak, (name, str(device), timesteps, batch, time_chunk))
        out.update({f"{name}_{key}": value for key, value in result.items()})
    for name in names[1:-1]:
        out[f"{name}_over_stock_peak"] = out[f"{name}_peak_mib"] / out["stock_peak_mib"]
    return out


def table(rows: List[Dict], memory: Sequence[Dict] = ()) -> str:
    names = [k[:-6] for k in rows[0] if k.endswith("_ratio")] if rows else []
    lines = [] if not rows else ["| T | T ANN steps (s) | " + " | ".join(f"{n}: s (x T ANN; of minima)" for n in names) + " |",
             "| --- " * (2 + len(names)) + "|"]
    for r in rows:
        cells = " | ".join(f"{r[n + '_s']:.3f} ({r[n + '_ratio']:.2f}x; {r[n + '_ratio_of_min']:.2f}x)" for n in names)
        lines.append(f"| {r['T']} | {r['T_ann_steps_s']:.3f} | {cells} |")
    for m in memory:
        lines += [f"\nBPTT peak memory, T={m['T']}, batch {m['batch']} (chunked: {m['time_chunk']} timesteps at a time)",
                  "", "| model | peak above the step's start (MiB) | whole process (MiB) | of stock's peak |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {k[:-9]} | {v:.0f} | {m[k[:-9] + '_process_peak_mib']:.0f} | "
                  f"{m.get(k[:-9] + '_over_stock_peak', float('nan')):.2f} |" for k, v in m.items()
                  if k.endswith("_peak_mib") and not k.endswith("_process_peak_mib")]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, nargs="*", default=[4, 8, 16], help="none: memory only")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also the BPTT peak memory (slow on CPU)")
    parser.add_argument("--memory-timesteps", type=int, nargs="+", default=[100], help="T of the --memory runs")
    parser.add_argument("--memory-batch", type=int, default=32, help="batch of the --memory runs")
    parser.add_argument("--memory-time-chunk", type=int, default=10, help="timesteps at a time of the chunked rows")
    parser.add_argument("--time-chunks", type=int, nargs="*", default=[1, 4],
                        help="also time our SNN run this many timesteps at a time (SpikingClassifier.time_chunk)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="also write the JSON object here")
    parser.add_argument("--markdown", help="also write the table here (markdown, with the device's name)")
    parser.add_argument("--keep-heap", action="store_true",
                        help="rerun with glibc keeping freed memory for reuse (faster multistep on CPU; see above)")
    args = parser.parse_args(argv)
    if args.keep_heap and args.memory:
        parser.error("--keep-heap keeps freed memory resident: measure --memory without it")
    if args.keep_heap and any(os.environ.get(k) != v for k, v in KEEP_HEAP_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_HEAP_ENV})  # glibc reads them at start
    device = torch.device(args.device)
    rows = time_steps(device, args.timesteps, args.batch, args.repeats, args.time_chunks)
    memory = ([memory_rows(device, T, args.memory_batch, args.memory_time_chunk) for T in args.memory_timesteps]
              if args.memory else [])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"benchmark": "attack_step_vgg5_3x32x32", "device": str(device), "device_name": device_name,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "keep_heap": args.keep_heap, "timing": rows, "memory": memory,
              "provenance": provenance()}
    print(table(rows, memory))
    print(json.dumps(result))
    if args.out:
        atomic_write_json(args.out, result)
    if args.markdown:
        with open(args.markdown, "w") as md:
            md.write(f"Attack step of spiking VGG5 (3x32x32, batch {args.batch}) on {device_name}, {args.repeats} interleaved "
                     f"repeats: seconds (median; multiples of T ANN steps: of medians; of minima)\n\n"
                     f"{table(rows, memory)}\n")
    return result


if __name__ == "__main__":
    main()
