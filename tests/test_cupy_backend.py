"""The CuPy backend's numpy fix, on any machine: scoped to the kernels snn-adv builds (the kernels themselves are
tested against the reference in test_cupy.py, GPU only)."""
import pytest

pytest.importorskip("spikingjelly.activation_based.auto_cuda", reason="SpikingJelly 2.x has no CuPy kernels")


def test_cupy_kernels_get_numpy_int_without_touching_spikingjelly_or_numpy(monkeypatch):
    # SpikingJelly 0.0.0.0.14's CKernel.check_ctypes reads np.int (gone in numpy >= 1.24) for an integer CuPy array,
    # at every kernel launch; with_numpy_int gives one kernel SpikingJelly's own check with a numpy that has int
    import numpy as np
    from spikingjelly.activation_based.auto_cuda import base

    from snn_adv.neurons.cupy_backend import with_numpy_int

    class FakeCupyArray:
        dtype = np.dtype(np.int64)

    monkeypatch.setattr(base, "cupy", type("FakeCupy", (), {"ndarray": FakeCupyArray}))
    kernel, other = object.__new__(base.CKernel), object.__new__(base.CKernel)
    kernel.cparams = other.cparams = {"numel": "const int &"}
    numel = {"numel": FakeCupyArray()}
    if hasattr(np, "int"):
        pytest.skip("this numpy still has np.int: nothing to fix")
    with pytest.raises(AttributeError, match="int"):
        other.check_ctypes(numel)  # the bug, as SpikingJelly ships it
    assert with_numpy_int(kernel) is kernel
    kernel.check_ctypes(numel)  # passes: int64 is a 'const int'
    kernel.cparams = {"numel": "const float *"}
    with pytest.raises(AssertionError):
        kernel.check_ctypes(numel)  # SpikingJelly's check still runs
    assert base.np is np and not hasattr(np, "int")  # nothing process-wide
    with pytest.raises(AttributeError, match="int"):
        other.check_ctypes(numel)  # a kernel not built by us is as SpikingJelly ships it
