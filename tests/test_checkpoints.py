"""Checkpoints: round trip of every kind, and a clear error for each way a file can be wrong."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from snn_adv import __version__, checkpoints
from conftest import loader
from snn_adv.classifier import AnnClassifier, SpikingClassifier
from snn_adv.conversion import convert, hybrid_init
from snn_adv.encoding import PoissonEncoder
from snn_adv.models import build_classifier, get_thresholds, spiking_twin, vgg_tiny
from snn_adv.neurons import HardResetLIFNode, LeakyLIFNode, PiecewiseLinear

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def _same_outputs(a, b, x):
    if hasattr(a, "encoder"):
        a.encoder.manual_seed(7)
        b.encoder.manual_seed(7)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def _models(pair):
    hybrid = hybrid_init(pair.snn, timesteps=5)
    hybrid.encoder = PoissonEncoder(rate=0.8, levels=16, seed=3)
    hybrid.lean, hybrid.time_chunk = False, 2
    return {"ann": pair.ann, "snn-conv": pair.snn, "snn-bp": hybrid,
            "resnet20-snn": build_classifier("resnet20", "fashion-mnist", kind="snn", timesteps=2, leak=0.95, width=4),
            "vgg5-ann": build_classifier("vgg5", "cifar10")}


@pytest.mark.parametrize("name", ["ann", "snn-conv", "snn-bp", "resnet20-snn", "vgg5-ann"])
def test_round_trip_of_every_kind(trained_pair, tmp_path, name):
    model = _models(trained_pair)[name]
    path = checkpoints.save(model, tmp_path / "m.pt", method=name, history=[{"epoch": 1, "loss": 0.5}], shape=(1, 2))
    loaded = checkpoints.load(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.metadata == {"method": name, "history": [{"epoch": 1, "loss": 0.5}], "shape": [1, 2]}
    assert loaded.arch["name"] == model.arch["name"] and loaded.arch["dataset"] == model.arch["dataset"]
    x = torch.rand(4, model.in_channels, *model.input_size)
    assert _same_outputs(model.eval(), loaded, x)
    if not isinstance(model, AnnClassifier):
        assert get_thresholds(loaded.body) == get_thresholds(model.body)
        assert [n.leak for n in loaded.neurons()] == [n.leak for n in model.neurons()]
        assert loaded.timesteps == model.timesteps and loaded.encoder.settings() == model.encoder.settings()
        assert (loaded.lean, loaded.time_chunk) == (model.lean, model.time_chunk)
    header = checkpoints.read_header(path)
    assert header["kind"] == model.kind and header["package_version"] == __version__ and "state_dict" not in header


def test_truncated_empty_text_and_directory(trained_pair, tmp_path):
    path = checkpoints.save(trained_pair.snn, tmp_path / "m.pt")
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], data[:100], data[:-1]):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="m.pt.*(corrupt or truncated|carries no content hash)"):
            checkpoints.load(path)
    for content, match in ((b"", "is empty"), (b"not a checkpoint at all\n", "is a text file"),
                           (b"\x80\x02garbage", "legacy"), (b"\x00\x01\x02binary", "not a zip archive")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=match):
            checkpoints.load(path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        checkpoints.load(tmp_path)


def test_every_flipped_bit_is_detected(tmp_path):
    """Bits flipped anywhere (zip headers, pickle, weights, the stored hash itself) never load silently."""
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", timesteps=2)
    path = checkpoints.save(model, tmp_path / "m.pt")
    data = bytearray(path.read_bytes())
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, len(data) * 8, (300,), generator=generator).tolist()
    positions += [0, 7, len(data) * 8 - 1, (len(data) - 64) * 8, (len(data) - 80) * 8]  # first/last byte, hash, tag
    for bit in positions:
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="m.pt"):
            checkpoints.load(path)
    several = bytearray(data)
    for bit in positions[:32]:
        several[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(several))
    with pytest.raises(ValueError, match="m.pt"):
        checkpoints.load(path)
    path.write_bytes(bytes(data))
    assert isinstance(checkpoints.load(path), SpikingClassifier)


class _Malicious:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_unsafe_pickle_header_without_arch_and_unsigned_files(trained_pair, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "snn-adv-checkpoint", "payload": _Malicious()}, path)
    with pytest.raises(ValueError, match="evil.pt.*refuses.*may be malicious"):
        checkpoints.load(path)
    path = checkpoints.save(trained_pair.ann, tmp_path / "ann.pt")
    payload = torch.load(path, weights_only=True)
    del payload["arch"]
    _write(path, payload)
    with pytest.raises(ValueError, match="ann.pt.*no 'arch' record"):
        checkpoints.load(path)
    torch.save(torch.load(path, weights_only=True), path)  # a whole checkpoint without the content hash
    with pytest.raises(ValueError, match="carries no content hash"):
        checkpoints.load(path)


def test_wrong_kind_missing_file_foreign_file(trained_pair, tmp_path):
    ann_path = checkpoints.save(trained_pair.ann, tmp_path / "ann.pt")
    with pytest.raises(ValueError, match="kind 'ann', expected kind 'snn'"):
        checkpoints.load(ann_path, kind="snn")
    with pytest.raises(ValueError, match="'kind' = 'cnn'"):
        checkpoints.load(ann_path, kind="cnn")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        checkpoints.load(tmp_path / "nope.pt")
    torch.save(trained_pair.ann.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(ValueError, match="not an snn-adv checkpoint"):
        checkpoints.load(tmp_path / "raw.pt")


def _write(path, payload):
    """Write ``payload`` as checkpoints.save does (signed with its content hash): a well-formed edited file."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(checkpoints._signed(buffer.getvalue()))


def _rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    _write(path, payload)


def test_other_version_and_mismatched_weights(trained_pair, tmp_path):
    path = checkpoints.save(trained_pair.ann, tmp_path / "ann.pt")
    _rewrite(path, package_version="0.0.1")
    with pytest.raises(ValueError, match=f"snn-adv '0.0.1', this is '{__version__}'"):
        checkpoints.load(path)
    assert isinstance(checkpoints.load(path, allow_version_mismatch=True), AnnClassifier)
    _rewrite(path, format_version=99)
    with pytest.raises(ValueError, match="format version 99"):
        checkpoints.load(path, allow_version_mismatch=True)
    path = checkpoints.save(trained_pair.ann, tmp_path / "ann2.pt")
    _rewrite(path, arch={"name": "vgg5", "dataset": "fashion-mnist", "kwargs": {}})
    with pytest.raises(ValueError, match="does not match its recorded architecture 'vgg5'"):
        checkpoints.load(path)


class _UsersNet(torch.nn.Module):
    """A user's own ANN, not one of the package's architectures."""

    def __init__(self, width=6):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4))
        self.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width * 49, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_users_own_networks_save_and_load_with_their_body(tmp_path, fmnist):
    torch.manual_seed(0)
    ann = AnnClassifier(_UsersNet(), mean=(0.5,), std=(0.5,), in_channels=1, input_size=(28, 28))
    snn = convert(ann, loader(fmnist.train_x[:64], fmnist.train_y[:64], 32), timesteps=4, progress=False)
    snn.set_leak(0.9)
    x = fmnist.test_x[:8]
    for model, fresh_body in ((ann, _UsersNet()), (snn, spiking_twin(_UsersNet()))):
        path = checkpoints.save(model, tmp_path / f"{model.kind}.pt", note="mine")
        with pytest.raises(ValueError, match="user-defined network.*_UsersNet.*body="):
            checkpoints.load(path)
        loaded = checkpoints.load(path, body=fresh_body)
        assert type(loaded) is type(model) and loaded.metadata == {"note": "mine"}
        assert _same_outputs(model.eval(), loaded, x)
        with pytest.raises(ValueError, match="'body.features.0.weight' has shape \\(6, 1, 3, 3\\) in the file, \\(8, 1, 3, 3\\)"):
            checkpoints.load(path, body=_UsersNet(width=8) if model.kind == "ann" else spiking_twin(_UsersNet(width=8)))
    assert [n.leak for n in loaded.neurons()] == [0.9] and get_thresholds(loaded.body) == get_thresholds(snn.body)
    with pytest.raises(TypeError, match="AnnClassifier or SpikingClassifier"):
        checkpoints.save(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_learnable_leaks_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", timesteps=3, leak=0.95)
    body = spiking_twin(vgg_tiny(), neuron_factory=lambda: LeakyLIFNode(leak=0.95, learnable_leak=True))
    model.body = body
    with torch.no_grad():
        for i, node in enumerate(model.neurons()):
            node.leak_param.fill_(0.9 - 0.1 * i)
    loaded = checkpoints.load(checkpoints.save(model, tmp_path / "m.pt"))
    assert all(n.learnable_leak for n in loaded.neurons())
    assert [round(n.leak.item(), 6) for n in loaded.neurons()] == [round(0.9 - 0.1 * i, 6) for i in range(4)]
    assert _same_outputs(model.eval(), loaded, torch.rand(2, 1, 28, 28))


def test_learnable_thresholds_round_trip(tmp_path):
    torch.manual_seed(0)
    model = hybrid_init(build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", timesteps=3), 3,
                        learnable_thresholds=True)
    trained = [-0.01, 0.75, 1.0, 1.25]  # as training may leave them: the first below the floor
    with torch.no_grad():
        for node, value in zip(model.neurons(), trained):
            node.threshold_param.fill_(value)
    loaded = checkpoints.load(checkpoints.save(model, tmp_path / "m.pt"))
    assert all(n.learnable_threshold and n.threshold_param.requires_grad for n in loaded.neurons())
    assert [float(n.threshold_param) for n in loaded.neurons()] == pytest.approx(trained)
    assert get_thresholds(loaded.body) == pytest.approx([LeakyLIFNode.min_threshold] + trained[1:])
    assert _same_outputs(model.eval(), loaded, torch.rand(2, 1, 28, 28))


def test_sigkill_while_saving_leaves_a_readable_checkpoint(tmp_path):
    """A process saving checkpoints in a loop is killed at a random moment: the file is always a whole one."""
    path = tmp_path / "m.pt"
    script = textwrap.dedent(f"""
        import sys
        from snn_adv import checkpoints
        from snn_adv.models import build_classifier
        model = build_classifier("vgg5", "cifar10")      # ~39 MB: kills land mid-write
        step = 0
        while True:
            checkpoints.save(model, {str(path)!r}, step=step)
            step += 1
            print(step, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete save exists
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert checkpoints.load(path).metadata["step"] >= 0


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    """Results and checkpoints are readable like any file the user writes (mkstemp alone would make them 0600)."""
    import os

    from snn_adv.io import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_neuron_variants_and_surrogates_reload_bit_identical(tmp_path):
    """The neuron class and its settings are recorded per layer: a HardResetLIFNode network with a user-given
    surrogate on one layer reloads with the same classes, settings and logits (it once reloaded as LeakyLIFNode,
    other logits); a user's body with other neurons than the file's is refused, naming the layer."""
    from spikingjelly.activation_based import surrogate

    torch.manual_seed(0)
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", timesteps=6, leak=0.9)
    surrogates = iter([surrogate.ATan(alpha=3.0), None, PiecewiseLinear(0.5, 2.0), None])
    model.body = spiking_twin(vgg_tiny(), neuron_factory=lambda: HardResetLIFNode(
        0.9, 0.4, next(surrogates), v_reset=0.1, detach_reset=True))
    x = torch.rand(8, 1, 28, 28)
    loaded = checkpoints.load(checkpoints.save(model, tmp_path / "m.pt"))
    assert [type(n) for n in loaded.neurons()] == [HardResetLIFNode] * 4
    assert [n.settings() for n in loaded.neurons()] == [n.settings() for n in model.neurons()]
    assert [n.v_threshold for n in loaded.neurons()] == [0.4] * 4
    assert _same_outputs(model.eval(), loaded, x)
    plain = build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", timesteps=6, leak=0.9)
    plain.load_state_dict(model.state_dict())
    assert not _same_outputs(model, plain.eval(), x)  # the variant matters: a default reload would be wrong
    with pytest.raises(ValueError, match="neuron layer 0.*HardResetLIFNode.*LeakyLIFNode"):
        checkpoints.load(tmp_path / "m.pt", body=spiking_twin(vgg_tiny()))


def test_build_classifier_records_its_neuron_in_arch(tmp_path):
    spec = {"name": "hard_reset_lif", "v_reset": 0.2, "detach_reset": False, "surrogate": None}
    model = build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", timesteps=4, leak=0.8, neuron=spec)
    assert model.arch["neuron"] == spec and all(n.settings() == spec for n in model.neurons())
    assert [float(n.leak) for n in model.neurons()] == [0.8] * 4
    loaded = checkpoints.load(checkpoints.save(model, tmp_path / "m.pt"))
    assert loaded.arch["neuron"] == spec and all(type(n) is HardResetLIFNode for n in loaded.neurons())
    assert _same_outputs(model.eval(), loaded, torch.rand(3, 1, 28, 28))
    with pytest.raises(ValueError, match="'lif2' is not registered"):
        build_classifier("vgg-tiny", "fashion-mnist-bundled", kind="snn", neuron={"name": "lif2"})
