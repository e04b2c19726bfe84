"""Fused CPU kernel of the multistep LIF neuron with the piecewise-linear surrogate (C++, built on first use).

Why our own kernel: on a CPU the torch loop over T costs several elementwise passes over memory per step (charge,
fire, reset, store), forward and backward, which made the neuron cost as much as the convolutions. This kernel
makes one pass each way, blocked so that a block of membranes stays in cache across all T:

    forward   h[t] = leak*v[t-1] + I[t];  s[t] = h[t] >= v_th;  v[t] = h[t] - v_th*s[t]      (stores h when asked)
    backward  recomputes h[t] of a block from the saved input I (writing h in the forward cost more than this), then
              sg = gamma/width * max(0, 1 - |h[t]-v_th|/width)
              dL/dh[t] = dL/dv[t] + sg*(dL/ds[t] - r*dL/dv[t])   (r = v_th, or 0 with a detached reset)
              dL/dv[t-1] = leak*dL/dh[t];   dL/dleak = sum_t dL/dh[t]*v[t-1]

Built on first use with ``torch.utils.cpp_extension.load_inline`` (needs a C++ compiler and ninja), once per build
key (a hash of the source, the flags and the torch and Python versions, so a binary built for another torch or an
older source is never loaded) in :func:`kernel_cache_dir` (``$SNN_ADV_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/snn-adv/kernels``), under an exclusive file lock (concurrent processes wait for one build), with
a one-line message on stderr while it compiles. Where the build fails, :func:`lif_kernel` returns None and the
caller keeps its pure-torch path. Set ``SNN_ADV_LIF_KERNEL=0`` to disable it.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {
constexpr int64_t kBlock = 16384;  // membranes per block: long streams for the prefetcher, the block state in L2

template <typename scalar_t, bool kStoreH>
void forward_impl(const scalar_t* __restrict__ x, scalar_t* __restrict__ v, scalar_t* __restrict__ s,
                  scalar_t* __restrict__ h_out, int64_t T, int64_t M,
                  scalar_t leak, scalar_t vth) {
  at::parallel_for(0, M, kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t e = std::min(end, b + kBlock);
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* xt = x + t * M;
        scalar_t* st = s + t * M;
        scalar_t* ht = kStoreH ? h_out + t * M : nullptr;
        for (int64_t i = b; i < e; ++i) {
          const scalar_t h = leak * v[i] + xt[i];
          const scalar_t spike = static_cast<scalar_t>(h >= vth);
          st[i] = spike;
          if (kStoreH) ht[i] = h;
          v[i] = h - vth * spike;
        }
      }
    }
  });
}

// Block length of the backward pass, whose block keeps h[0..T-1] in a scratch buffer (about 1 MiB).
int64_t backward_block(int64_t T) {
  return std::max<int64_t>(256, std::min<int64_t>(kBlock, (int64_t(1) << 18) / std::max<int64_t>(T, 1)));
}

// One reverse time step over n membranes (a function of its own, with restrict pointers, so that gcc vectorises it).
// gs and gx may be the same buffer (the outgoing gradient written over the incoming one): element j is read
// before it is written, so they carry no __restrict__.
template <typename scalar_t, bool kDetach, bool kLeakGrad>
double backward_step(const scalar_t* gs, const scalar_t* __restrict__ h, const scalar_t* __restrict__ vp,
                     scalar_t* gx, scalar_t* __restrict__ gv, int64_t n, scalar_t reset, scalar_t leak,
                     scalar_t vth, scalar_t scale, scalar_t width) {
  double leak_acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t sg = std::max(scalar_t(0), scalar_t(1) - std::abs(h[j] - vth) / width) * scale;
    const scalar_t gsj = gs[j];
    const scalar_t gh = kDetach ? gv[j] + gsj * sg : gv[j] + sg * (gsj - vth * gv[j]);
    gx[j] = gh;
    if (kLeakGrad) leak_acc += static_cast<double>(gh * (vp[j] - reset * static_cast<scalar_t>(vp[j] >= vth)));
    gv[j] = gh * leak;
  }
  return leak_acc;
}

template <typename scalar_t, bool kDetach, bool kLeakGrad>
void backward_impl(const scalar_t* gs, const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0,
                   scalar_t* gx, scalar_t* __restrict__ gv, double* leak_partial, int64_t T, int64_t M,
                   scalar_t leak, scalar_t vth, scalar_t gamma, scalar_t width) {
  const scalar_t scale = gamma / width;
  const int64_t B = backward_block(T);
  // Parallel over whole blocks (never over membranes: ATen's chunks need not be multiples of B), so that each
  // block writes its own leak partial and the sum is the same for any number of threads.
  at::parallel_for(0, (M + B - 1) / B, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<scalar_t> h_buf(T * B), v_buf(B);
    scalar_t* __restrict__ hs = h_buf.data();
    scalar_t* __restrict__ vs = v_buf.data();
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t b = block * B, n = std::min(M, b + B) - b;
      // recompute h[t] for this block, bit for bit as the forward did (cheaper than storing it there)
      std::copy(v0 + b, v0 + b + n, vs);
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* xt = x + t * M + b;
        scalar_t* ht = hs + t * B;
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t h = leak * vs[j] + xt[j];
          ht[j] = h;
          vs[j] = h - vth * static_cast<scalar_t>(h >= vth);
        }
      }
      double leak_acc = 0.0;
      scalar_t* gvb = gv + b;
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* gst = gs + t * M + b;
        const scalar_t* ht = hs + t * B;
        const scalar_t* vp = t > 0 ? hs + (t - 1) * B : v0 + b;  // h[t-1] (reset below) or v[-1]
        const scalar_t reset = t > 0 ? vth : scalar_t(0);
        scalar_t* gxt = gx + t * M + b;
        leak_acc += backward_step<scalar_t, kDetach, kLeakGrad>(gst, ht, vp, gxt, gvb, n, reset, leak, vth, scale, width);
      }
      if (kLeakGrad) leak_partial[block] = leak_acc;
    }
  });
}
}  // namespace

// Membranes per block of the backward pass at T steps (exported for the tests, which size inputs in blocks).
int64_t lif_backward_block(int64_t T) { return backward_block(T); }

// x_seq [T, M], v [M] (updated in place to v[T-1]); returns (spikes, h or empty).
std::vector<at::Tensor> lif_forward(at::Tensor x_seq, at::Tensor v, double leak, double vth, bool store_h) {
  const int64_t T = x_seq.size(0), M = x_seq.numel() / std::max<int64_t>(T, 1);
  auto s = at::empty_like(x_seq);
  auto h = store_h ? at::empty_like(x_seq) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x_seq.scalar_type(), "lif_forward", [&] {
    auto f = store_h ? forward_impl<scalar_t, true> : forward_impl<scalar_t, false>;
    f(x_seq.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
      store_h ? h.data_ptr<scalar_t>() : nullptr, T, M, scalar_t(leak), scalar_t(vth));
  });
  return {s, h};
}

// grad_s, x [T, M], v0 and grad_v [M] (grad_v: dL/dv[T-1] in, dL/dv[-1] out); returns (grad_x, grad_leak).
// With in_place, grad_x is written over grad_s (and returned): no second [T, M] buffer.
std::vector<at::Tensor> lif_backward(at::Tensor grad_s, at::Tensor x, at::Tensor v0, at::Tensor grad_v, double leak,
                                     double vth, double gamma, double width, bool detach_reset, bool leak_grad,
                                     bool in_place) {
  const int64_t T = x.size(0), M = x.numel() / std::max<int64_t>(T, 1);
  auto gx = in_place ? grad_s : at::empty_like(x);
  std::vector<double> partial((M + backward_block(T) - 1) / backward_block(T), 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lif_backward", [&] {
    auto f = detach_reset ? (leak_grad ? backward_impl<scalar_t, true, true> : backward_impl<scalar_t, true, false>)
                          : (leak_grad ? backward_impl<scalar_t, false, true> : backward_impl<scalar_t, false, false>);
    f(grad_s.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), v0.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
      grad_v.data_ptr<scalar_t>(), partial.data(), T, M, scalar_t(leak), scalar_t(vth), scalar_t(gamma),
      scalar_t(width));
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return {gx, at::scalar_tensor(total, x.options())};
}
"""

_FUNCTIONS = ("lif_forward", "lif_backward", "lif_backward_block")
_CFLAGS = ("-O3", "-fno-trapping-math", "-fopenmp")  # no traps: lets gcc vectorise the compares
_LDFLAGS = ("-fopenmp",)

_kernel = None
_tried = False  # whether the build was attempted in this process
_disabled = False


def kernel_cache_dir() -> Path:
    """Folder of the compiled kernels: ``$SNN_ADV_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/snn-adv/kernels``
    (``~/.cache/snn-adv/kernels``)."""
    explicit = os.environ.get("SNN_ADV_KERNEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "snn-adv" / "kernels"


def kernel_build_key() -> str:
    """Hash of everything the binary depends on: source, exported functions, flags, torch and Python versions."""
    import torch

    parts = [_SOURCE, *_FUNCTIONS, *_CFLAGS, *_LDFLAGS, torch.__version__, sys.version, sys.platform]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _build() -> object:
    """Compile (once per build key, under an exclusive file lock) or load the extension."""
    import fcntl
    import logging

    # importing cpp_extension logs "No CUDA runtime is found" on a CPU-only machine: irrelevant to a CPU kernel
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load_inline
    finally:
        cpp_logger.setLevel(level)

    name = f"snn_adv_lif_cpu_{kernel_build_key()}"
    build_dir = kernel_cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS even if this process dies
        if not (build_dir / f"{name}.so").exists():
            print(f"snn_adv: compiling the fused CPU LIF kernel (once per torch version, about a minute) in {build_dir}",
                  file=sys.stderr, flush=True)
        # torch's own lock file in the build folder outlives a killed build and would make load_inline wait
        # forever; under our lock no other snn_adv build is running, so a leftover one is stale.
        (build_dir / "lock").unlink(missing_ok=True)
        # fresh lists: load_inline appends its own flags to the ones it is given
        return load_inline(name=name, cpp_sources=_SOURCE, functions=list(_FUNCTIONS), extra_cflags=list(_CFLAGS),
                           extra_ldflags=list(_LDFLAGS), build_directory=str(build_dir), verbose=False)


def lif_kernel():
    """The compiled extension (functions ``lif_forward``, ``lif_backward``), or None where it cannot be built or is
    disabled."""
    global _kernel, _tried
    if _disabled or os.environ.get("SNN_ADV_LIF_KERNEL", "1") == "0":
        return None
    if not _tried:
        _tried = True
        try:
            _kernel = _build()
        except Exception as error:  # no compiler / ninja / headers: keep the pure-torch path
            warnings.warn(f"snn_adv: fused CPU LIF kernel unavailable ({error!s:.200}); using the torch loop")
    return _kernel


def kernel_enabled(enabled: Optional[bool] = None) -> bool:
    """Query (or, with ``enabled``, switch on/off for this process) the use of the fused kernel."""
    global _disabled
    if enabled is not None:
        _disabled = not enabled
    return lif_kernel() is not None
