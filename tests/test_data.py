"""snn_adv.data against independent references: hand-written idx files and CIFAR pickles, the shared full
Fashion-MNIST, exact pixel arithmetic, and brute-force checks of the augmentation."""
import gzip
import hashlib
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from snn_adv.data import (DATASETS, dataset_info, load_dataset, load_tensors, make_loader, read_idx,
                          stratified_indices, where_to_put)

SHARED_FMNIST = next((p / "shared/datasets/fashion-mnist" for p in Path(__file__).resolve().parents
                      if (p / "shared/datasets/fashion-mnist").is_dir()), Path("/nonexistent"))


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """idx writer from the format's definition: 0, 0, dtype code 0x08 (uint8), ndim, big-endian sizes, data."""
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_idx_dir(root: Path, n_train=30, n_test=20, seed=0):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))
        write_idx(root / f"{split}-images-idx3-ubyte.gz", arrays[split][0])
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", arrays[split][1])
    return arrays


def test_registry_carries_the_papers_normalisation():
    for name, info in DATASETS.items():
        assert info.mean == (0.5,) * info.in_channels and info.std == (0.5,) * info.in_channels
        assert len(info.classes) == info.num_classes
    assert (dataset_info("cifar10").in_channels, dataset_info("cifar10").input_size) == (3, (32, 32))
    assert dataset_info("cifar100").num_classes == 100
    assert (dataset_info("fashion-mnist").in_channels, dataset_info("mnist").input_size) == (1, (28, 28))
    with pytest.raises(ValueError, match=r"'dataset' = 'imagenet'.*'cifar10'"):
        dataset_info("imagenet")


def test_bundled_subset_is_balanced_and_in_range():
    for split, count in (("train", 6000), ("test", 1000)):
        x, y = load_tensors("fashion-mnist-bundled", split)
        assert x.shape == (count, 1, 28, 28) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
        assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), count // 10))


@pytest.mark.skipif(not SHARED_FMNIST.is_dir(), reason="full Fashion-MNIST not available")
def test_bundled_subset_is_taken_from_the_real_dataset():
    full_x, _ = load_tensors("fashion-mnist", "test", root=SHARED_FMNIST)
    sub_x, _ = load_tensors("fashion-mnist-bundled", "test")
    full = {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in full_x}
    assert all(hashlib.sha1(img.numpy().tobytes()).hexdigest() in full for img in sub_x)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip_and_damage(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if compress else "a")
    write_idx(path, array, compress)
    assert np.array_equal(read_idx(path), array)
    raw = gzip.decompress(path.read_bytes()) if compress else path.read_bytes()
    truncated = tmp_path / "t"
    truncated.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)
    truncated.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(truncated)


def test_local_idx_directory_is_a_source_and_checksums_are_verified(tmp_path):
    arrays = make_idx_dir(tmp_path / "mnist")
    for root in (tmp_path, tmp_path / "mnist"):  # DIR or DIR/<name>
        x, y = load_tensors("mnist", "train", root=root)
        assert torch.equal(x, torch.from_numpy(arrays["train"][0]).float().div(255).unsqueeze(1))
        assert torch.equal(y, torch.from_numpy(arrays["train"][1]).long())
    sums = tmp_path / "mnist/SHA256SUMS"
    sums.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                            for p in sorted((tmp_path / "mnist").glob("*.gz"))))
    assert len(load_dataset("mnist", "test", root=tmp_path)) == 20
    sums.write_text(sums.read_text().replace(sums.read_text()[:8], "00000000", 1))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*SHA256SUMS"):  # the first line's file
        load_dataset("mnist", "test", root=tmp_path)


def test_damaged_idx_files_and_manifests_name_the_file(tmp_path):
    make_idx_dir(tmp_path / "mnist")
    images = tmp_path / "mnist/t10k-images-idx3-ubyte.gz"
    good = images.read_bytes()
    images.write_bytes(gzip.decompress(good))  # not gzip, though named .gz
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is not a complete gzip file"):
        load_dataset("mnist", "test", root=tmp_path)
    images.write_bytes(good[: len(good) // 2])  # a cut-off download
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is not a complete gzip file"):
        load_dataset("mnist", "test", root=tmp_path)
    images.write_bytes(gzip.compress(gzip.decompress(good)[:-3]))  # complete gzip, cut-off idx
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is truncated"):
        load_dataset("mnist", "test", root=tmp_path)
    images.write_bytes(good)
    sums = tmp_path / "mnist/SHA256SUMS"
    sums.write_text("d41d8cd98f00b204e9800998ecf8427e  t10k-images-idx3-ubyte.gz\n")  # an md5 is not a sha256
    with pytest.raises(ValueError, match=r"SHA256SUMS' line 1 is not '<64 hex digits>  <file name>'"):
        load_dataset("mnist", "test", root=tmp_path)
    sums.write_text(f"{hashlib.sha256(good).hexdigest()}  t10k-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz' is not listed in"):
        load_dataset("mnist", "test", root=tmp_path)


def test_root_with_the_bundled_dataset_is_reported_as_ignored_once(tmp_path):
    with pytest.warns(UserWarning, match=r"'root' = .* is ignored: the dataset 'fashion-mnist-bundled'"):
        load_dataset("fashion-mnist-bundled", "test", root=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("fashion-mnist-bundled", "train", root=tmp_path)  # once per root and process


def make_fake_cifar10(root: Path, n_per_batch=4, seed=0) -> np.ndarray:
    """The python-pickle layout torchvision's CIFAR10 reads: data rows are 3x32x32 uint8 in CHW order."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": list(rng.integers(0, 10, n_per_batch))}))
        batches.append(data)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["c"] * 10}))
    return np.concatenate(batches[:5])


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """The fake files cannot match torchvision's md5 sums; None skips the check (the layout is what is tested)."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[name, None] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, None] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})


def test_cifar10_from_a_local_folder_without_network(tmp_path, no_cifar_md5):
    raw = make_fake_cifar10(tmp_path)
    x, _ = load_tensors("cifar10", "train", root=tmp_path)
    expected = torch.from_numpy(raw.reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(x, expected, atol=1e-6)
    image, _ = load_dataset("cifar10", "train", root=tmp_path)[0]  # augmented by default for CIFAR training
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1


def _crop_flip_shift(augmented: torch.Tensor, original: torch.Tensor, pad: int, flip: bool):
    """The (dy, dx) shift of the padded crop (of the flipped image, when ``flip``) equal to ``augmented``, or None."""
    size = original.shape[-1]
    for candidate in (original, original.flip(-1)) if flip else (original,):
        padded = torch.nn.functional.pad(candidate, (pad,) * 4)
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.equal(padded[..., dy:dy + size, dx:dx + size], augmented):
                    return dy - pad, dx - pad
    return None


def assert_crop_flip_augmentation(plain, augmented, pad: int = 4) -> None:
    """Every augmented image is a crop with padding ``pad`` (flipped or not) of its original; the crops vary, and
    the largest shift seen is ``pad`` (a smaller padding would never shift that far)."""
    torch.manual_seed(0)
    shifts = []
    for i in range(len(plain)):
        shift = _crop_flip_shift(augmented[i][0], plain[i][0], pad=pad, flip=True)
        assert shift is not None, f"image {i} is no padded crop or flip of its original"
        shifts.append(shift)
    assert sum(s != (0, 0) for s in shifts) >= len(plain) // 2  # P(no shift) = 1/81 per image
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) == pad  # P(all within pad-1) = (49/81)^N


def test_cifar_augmentation_is_a_padded_crop_and_flip(tmp_path, no_cifar_md5):
    make_fake_cifar10(tmp_path)
    plain = load_dataset("cifar10", "train", root=tmp_path, augment=False)
    assert_crop_flip_augmentation(plain, load_dataset("cifar10", "train", root=tmp_path))


def test_offline_without_data_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True \(--download\)"):
        load_dataset("cifar10", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion-mnist", "test", root=tmp_path)
    message = str(error.value)  # the one message: where it looked, the layout, how to point at it, how to download
    assert message == where_to_put("fashion-mnist", tmp_path, "not found (or corrupt)")
    for part in (str(tmp_path), "train-images-idx3-ubyte.gz", "DIR/fashion-mnist", "--data-root DIR", "SNN_ADV_DATA",
                 "download=True (--download)", "fashion-mnist-bundled"):
        assert part in message


def test_loader_order_is_seeded_and_subset_stratified():
    first = lambda seed: next(iter(make_loader("fashion-mnist-bundled", "train", 64, subset=500, seed=seed)))[1]
    assert torch.equal(first(3), first(3)) and not torch.equal(first(3), first(4))
    labels = torch.cat([y for _, y in make_loader("fashion-mnist-bundled", "train", 128, subset=500)])
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 50))


def test_stratified_indices():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 45)
    idx = stratified_indices(labels, 20, seed=1)
    assert np.array_equal(idx, stratified_indices(labels, 20, seed=1)) and len(set(idx)) == 20
    counts = np.bincount(labels[idx])
    assert counts[1] == 5 and abs(counts[0] - counts[2]) <= 1  # the small class taken whole, the rest balanced
    with pytest.raises(ValueError, match="'count' = 101"):
        stratified_indices(labels, 101)
    with pytest.raises(ValueError, match="'count' = 0"):
        stratified_indices(labels, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'split' = 'val'"):
        load_dataset("fashion-mnist-bundled", "val")
    with pytest.raises(ValueError, match="'batch_size' = 0"):
        make_loader("fashion-mnist-bundled", batch_size=0)
