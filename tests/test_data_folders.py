"""CIFAR-10 (JPEG copy) and users' image folders against independent references: synthetic JPEG/PNG trees and
archives written here with PIL and tarfile, decoded again with PIL directly; hash checks, the decode cache, the
errors that name their file, and content fingerprints."""
import gzip
import hashlib
import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import snn_adv.data.folders as folders
from snn_adv import checkpoints
from snn_adv.data import (CIFAR10_CLASSES, CIFAR100_CLASSES, dataset_fingerprint, dataset_info, image_folder,
                          load_dataset, load_tensors, locate, make_loader)
from snn_adv.models import build_classifier
from test_data import assert_crop_flip_augmentation, make_fake_cifar10, make_idx_dir, no_cifar_md5  # noqa: F401 (fixture)

SHARED_JPEG = next((p / "shared/datasets/cifar10-jpeg" for p in Path(__file__).resolve().parents
                    if (p / "shared/datasets/cifar10-jpeg/SHA256SUMS").is_file()), None)


@pytest.fixture(autouse=True)
def decode_cache(tmp_path, monkeypatch) -> Path:
    """Every test decodes into its own cache folder."""
    monkeypatch.setenv("SNN_ADV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


def write_tree(root: Path, classes, per_class: dict, size=(32, 32), mode="RGB", fmt="JPEG", seed=0) -> None:
    """``root/<split>/<class>/NNNN.<ext>`` with random images (sizes drawn around ``size`` when it is None)."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = size if size is not None else rng.integers(10, 40, 2)
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    root / split / c / f"{i:04d}.{fmt.lower().replace('jpeg', 'jpg')}", fmt, quality=90)


def pack(tree: Path, out: Path) -> None:
    """The two archives and their SHA256SUMS, as the shared folder holds them."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with tarfile.open(out / f"cifar10-jpeg-{split}.tar.gz", "w:gz") as tar:
            tar.add(tree / split, arcname=split)
    write_sums(out)


def write_sums(folder: Path) -> None:
    (folder / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                               for p in sorted(folder.glob("*.tar.gz"))))


def reference(tree: Path, split: str, classes=CIFAR10_CLASSES, mode="RGB"):
    """Images decoded by PIL directly, in sorted path order, and labels = index of the class folder."""
    paths = sorted((p for p in (tree / split).rglob("*") if p.is_file()), key=lambda p: p.relative_to(tree / split).as_posix())
    images = [np.asarray(Image.open(p).convert(mode), dtype=np.float32) / 255 for p in paths]
    x = torch.from_numpy(np.stack(images))
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
    return x, torch.tensor([classes.index(p.parent.name) for p in paths])


@pytest.fixture
def jpeg_copy(tmp_path):
    """(extracted tree, folder with the archives) of a 10-class CIFAR-like JPEG dataset: 3 / 2 images per class."""
    tree = tmp_path / "tree"
    write_tree(tree, CIFAR10_CLASSES, {"train": 3, "test": 2})
    pack(tree, tmp_path / "archives")
    return tree, tmp_path / "archives"


def test_cifar10_jpeg_from_archives_and_tree_equals_pil_decoding(jpeg_copy):
    tree, archives = jpeg_copy
    nested = tree.parent / "nested"  # DIR/cifar10-jpeg is searched too
    nested.mkdir()
    (nested / "cifar10-jpeg").symlink_to(archives)
    for split, n in (("train", 30), ("test", 20)):
        want_x, want_y = reference(tree, split)
        for root in (archives, tree, nested):
            x, y = load_tensors("cifar10-jpeg", split, root=root)
            assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32
            assert torch.equal(x, want_x) and torch.equal(y, want_y)
    assert dataset_info("cifar10-jpeg").classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck")  # the README's label order


def test_cifar10_jpeg_training_augmentation_is_crop_and_flip(jpeg_copy):
    _, archives = jpeg_copy
    plain = load_dataset("cifar10-jpeg", "train", root=archives, augment=False)
    assert_crop_flip_augmentation(plain, load_dataset("cifar10-jpeg", "train", root=archives))
    batch = next(iter(make_loader("cifar10-jpeg", "test", 8, root=archives)))[0]
    assert torch.equal(batch, load_tensors("cifar10-jpeg", "test", root=archives)[0][:8])  # test split: no augmentation


def test_decoded_once_then_from_the_cache(jpeg_copy, monkeypatch, decode_cache):
    _, archives = jpeg_copy
    first = load_tensors("cifar10-jpeg", "test", root=archives)
    assert len(list(decode_cache.glob("cifar10-jpeg-test-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders, "read_archive_split", no_decoding)
    second = load_tensors("cifar10-jpeg", "test", root=archives)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_a_cache_that_does_not_match_is_rebuilt(jpeg_copy, decode_cache):
    _, archives = jpeg_copy
    want = load_tensors("cifar10-jpeg", "test", root=archives)
    (cache,) = decode_cache.glob("cifar10-jpeg-test-*.npz")
    with np.load(cache) as stored:  # same key and digest, other pixels: the content check must catch it
        tampered = {k: stored[k] for k in stored.files}
    tampered["images"] = tampered["images"] ^ 1
    buffer = io.BytesIO()
    np.savez(buffer, **tampered)
    for damage in (buffer.getvalue(), cache.read_bytes()[:1000], b"not an npz"):
        cache.write_bytes(damage)
        with pytest.warns(UserWarning, match=r"decoded cache .*cifar10-jpeg-test.*rebuilding"):
            got = load_tensors("cifar10-jpeg", "test", root=archives)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_tensors("cifar10-jpeg", "test", root=archives)  # the rebuilt cache is trusted again


def test_new_archive_content_gets_a_new_cache(jpeg_copy, tmp_path):
    tree, archives = jpeg_copy
    load_tensors("cifar10-jpeg", "test", root=archives)
    other = tmp_path / "other"
    write_tree(other, CIFAR10_CLASSES, {"train": 1, "test": 2}, seed=5)
    pack(other, archives)  # same paths, new bytes and SHA256SUMS
    x, y = load_tensors("cifar10-jpeg", "test", root=archives)
    want_x, want_y = reference(other, "test")
    assert torch.equal(x, want_x) and torch.equal(y, want_y)


def test_damaged_archives_and_manifests_name_the_file(jpeg_copy):
    _, archives = jpeg_copy
    test_archive, sums = archives / "cifar10-jpeg-test.tar.gz", archives / "SHA256SUMS"
    good = sums.read_text()
    sums.write_text(good.replace(good[:8], "00000000", 1))  # first line: the test archive
    with pytest.raises(ValueError, match=r"cifar10-jpeg-test.tar.gz' fails its SHA256SUMS check"):
        load_tensors("cifar10-jpeg", "test", root=archives)
    sums.write_text("this is not a manifest\n")
    with pytest.raises(ValueError, match=r"SHA256SUMS' line 1 is not"):
        load_tensors("cifar10-jpeg", "test", root=archives)
    sums.write_text(good.splitlines()[1] + "\n")  # lists only the train archive
    with pytest.raises(ValueError, match=r"cifar10-jpeg-test.tar.gz' is not listed in"):
        load_tensors("cifar10-jpeg", "test", root=archives)
    sums.unlink()
    with pytest.raises(FileNotFoundError, match=r"SHA256SUMS' is missing"):
        load_tensors("cifar10-jpeg", "test", root=archives)
    test_archive.write_bytes(test_archive.read_bytes()[: test_archive.stat().st_size // 2])
    write_sums(archives)  # a manifest that matches the damage: the decoder must still name the archive
    with pytest.raises(ValueError, match=r"archive .*cifar10-jpeg-test.tar.gz' is corrupt or truncated"):
        load_tensors("cifar10-jpeg", "test", root=archives)


def _refused_or_unchanged(archives, want, where):
    """Load the test split of ``archives`` (its SHA256SUMS regenerated to match whatever it holds): refused with a
    ValueError naming the archive, or decoded to exactly ``want``; never other pixels. Return True if refused."""
    write_sums(archives)
    try:
        got = load_tensors("cifar10-jpeg", "test", root=archives)
    except ValueError as error:
        assert "cifar10-jpeg-test.tar.gz" in str(error), where
        return True
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), where
    return False


def test_flipped_bytes_of_an_archive_with_a_matching_manifest_are_refused_never_decoded(jpeg_copy):
    """A copy of the test archive with one byte flipped and its SHA256SUMS regenerated (so the hash check passes):
    the gzip CRC, the tar structure or the JPEG decoder refuses it, naming the archive; the few harmless positions
    (gzip header fields such as its time stamp) decode to the same pixels, under a new fingerprint (so every
    dependent cell is recomputed, never mixed with the old ones)."""
    _, archives = jpeg_copy
    archive = archives / "cifar10-jpeg-test.tar.gz"
    data = archive.read_bytes()
    want, fingerprint = load_tensors("cifar10-jpeg", "test", root=archives), dataset_fingerprint("cifar10-jpeg", archives)
    positions = sorted({*range(12), *range(len(data) - 8, len(data)), *range(12, len(data) - 8, len(data) // 150)})
    refused = 0
    for position in positions:
        archive.write_bytes(data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1:])
        refused += _refused_or_unchanged(archives, want, f"byte {position}")
        assert dataset_fingerprint("cifar10-jpeg", archives) != fingerprint
    assert refused >= len(positions) - 12  # at most the gzip header's harmless fields decode


def test_a_damaged_tar_header_behind_a_valid_gzip_is_refused(jpeg_copy):
    """``tarfile`` reads a damaged member header after the first as the end of the archive and silently drops the
    rest; the reader refuses it because what follows is not padding."""
    _, archives = jpeg_copy
    archive = archives / "cifar10-jpeg-test.tar.gz"
    stream = bytearray(gzip.decompress(archive.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(stream))) as tar:
        member = tar.getmembers()[5]
    for damage in (b"\0" * 512, b"x" * 512):  # a zeroed header (an end marker), a header with a wrong checksum
        stream[member.offset:member.offset + 512] = damage
        archive.write_bytes(gzip.compress(bytes(stream)))
        write_sums(archives)
        with pytest.raises(ValueError, match=r"cifar10-jpeg-test.tar.gz' is corrupt: its tar stream ends at byte"):
            load_tensors("cifar10-jpeg", "test", root=archives)


def test_missing_dataset_gives_the_one_message(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_tensors("cifar10-jpeg", "test", root=tmp_path)
    message = str(error.value)
    assert "cifar10-jpeg-train.tar.gz" in message and "train/<class>/*.jpg" in message and str(tmp_path) in message
    assert "cannot download" in message and "'cifar10' with download=True" in message
    (tmp_path / "cifar10-jpeg-train.tar.gz").write_bytes(b"")  # one archive is not a source
    with pytest.raises(FileNotFoundError, match="cifar10-jpeg-test.tar.gz"):
        load_tensors("cifar10-jpeg", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not found under .*ImageFolder layout.*--data-root"):
        image_folder(tmp_path, input_size=8)


def test_a_bad_image_names_its_file(jpeg_copy):
    tree, _ = jpeg_copy
    bad = tree / "test" / "cat" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"test/cat/0001.jpg' is not a readable image"):
        load_tensors("cifar10-jpeg", "test", root=tree)


# ---------------------------------------------------------------------------------------------- users' folders
def test_image_folder_with_users_size_channels_and_normalisation(tmp_path):
    classes = ("dogs", "cats", "birds")
    write_tree(tmp_path, classes, {"train": 4, "val": 2}, size=None, mode="L", fmt="PNG")
    info = image_folder(tmp_path, input_size=(12, 16), mean=[0.3], std=[0.2], channels=1)
    assert info.classes == ("birds", "cats", "dogs") and (info.in_channels, info.input_size) == (1, (12, 16))
    assert dataset_info(info.spec()) == info  # the JSON spec round-trips
    x, y = load_tensors(info.spec(), "test", root=tmp_path)
    paths = sorted((tmp_path / "val").rglob("*.png"), key=lambda p: p.relative_to(tmp_path / "val").as_posix())
    for image, label, path in zip(x, y, paths):  # independent resize: cover 12x16, centre crop
        pil = Image.open(path).convert("L")
        scale = max(12 / pil.height, 16 / pil.width)
        pil = pil.resize((max(16, round(pil.width * scale)), max(12, round(pil.height * scale))), Image.BILINEAR)
        left, top = (pil.width - 16) // 2, (pil.height - 12) // 2
        want = np.asarray(pil.crop((left, top, left + 16, top + 12)), dtype=np.float32) / 255
        assert torch.equal(image[0], torch.from_numpy(want)) and int(label) == info.classes.index(path.parent.name)
    model = build_classifier("vgg-tiny", info.spec())  # sized by the spec: 1x12x16 in, 3 classes out
    assert model.in_channels == 1 and torch.allclose(model.mean.flatten(), torch.tensor([0.3]))
    assert torch.allclose(model.std.flatten(), torch.tensor([0.2])) and model(x).shape == (len(x), 3)
    path = tmp_path / "m.pt"
    checkpoints.save(model, path)
    assert checkpoints.load(path).arch["dataset"] == info.spec()


def test_image_folder_spec_errors(tmp_path):
    write_tree(tmp_path, ("a", "b"), {"train": 1, "test": 1}, size=(8, 8))
    spec = {"name": "imagefolder", "classes": ["a", "c"], "input_size": 8}
    with pytest.raises(ValueError, match=r"class folders \['a', 'b'\], expected \['a', 'c'\]"):
        load_tensors(spec, "test", root=tmp_path)
    with pytest.raises(ValueError, match="needs 'classes'"):
        dataset_info({"name": "imagefolder", "input_size": 8})
    with pytest.raises(ValueError, match=r"'mean' = \[0.5, 0.5\]: must be a number or 3 numbers"):
        dataset_info({**spec, "mean": [0.5, 0.5]})
    with pytest.raises(ValueError, match="key 'sizes' is unknown"):
        dataset_info({**spec, "sizes": 8})
    with pytest.raises(FileNotFoundError, match="ImageFolder layout"):
        load_tensors({**spec, "classes": ["a", "b"]}, "test", root=None)


# ---------------------------------------------------------------------------------------------- fingerprints
def test_fingerprint_follows_content_not_path(jpeg_copy, tmp_path):
    tree, archives = jpeg_copy
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for p in archives.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert dataset_fingerprint("cifar10-jpeg", archives) == dataset_fingerprint("cifar10-jpeg", copy)
    assert dataset_fingerprint("cifar10-jpeg", tree) != dataset_fingerprint("cifar10-jpeg", archives)
    before = dataset_fingerprint("cifar10-jpeg", tree)
    image = tree / "train/dog/0002.jpg"
    image.write_bytes(image.read_bytes()[:-1] + bytes([image.read_bytes()[-1] ^ 1]))  # one byte
    changed = dataset_fingerprint("cifar10-jpeg", tree)
    image.rename(tree / "train/dog/0009.jpg")  # same bytes, another name
    assert len({before, changed, dataset_fingerprint("cifar10-jpeg", tree)}) == 3
    (copy / "SHA256SUMS").write_text("0" * 64 + "  cifar10-jpeg-test.tar.gz\n" + (copy / "SHA256SUMS").read_text().splitlines()[1])
    with pytest.raises(ValueError, match="fails its SHA256SUMS check"):
        dataset_fingerprint("cifar10-jpeg", copy)
    spec = image_folder(tree, input_size=16, channels=3)
    assert dataset_fingerprint(spec, tree) != dataset_fingerprint(image_folder(tree, input_size=8), tree)


def test_fingerprint_of_idx_bundled_and_torchvision_sources(tmp_path, no_cifar_md5):
    make_idx_dir(tmp_path / "a" / "mnist")
    make_idx_dir(tmp_path / "b")
    assert dataset_fingerprint("mnist", tmp_path / "a") == dataset_fingerprint("mnist", tmp_path / "b")
    assert dataset_fingerprint("mnist", tmp_path / "a") != dataset_fingerprint("fashion-mnist", tmp_path / "b")
    make_idx_dir(tmp_path / "c", seed=1)
    assert dataset_fingerprint("mnist", tmp_path / "c") != dataset_fingerprint("mnist", tmp_path / "b")
    assert len(dataset_fingerprint("fashion-mnist-bundled")) == 16
    make_fake_cifar10(tmp_path / "d")
    make_fake_cifar10(tmp_path / "e")
    make_fake_cifar10(tmp_path / "f", seed=1)
    fingerprints = [dataset_fingerprint("cifar10", tmp_path / d) for d in "def"]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    with pytest.raises(FileNotFoundError, match=r"'cifar100' not found .*cifar-100-python.*download=True"):
        dataset_fingerprint("cifar100", tmp_path / "d")


def test_cifar100_from_an_image_folder_copy_where_torchvision_cannot_download(tmp_path):
    """A machine without internet: CIFAR-100 as an ImageFolder copy (fine-label folders) gives PIL's pixels and the
    labels of CIFAR-100's own order; a torchvision folder beside it wins; the missing-data message names both."""
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*ImageFolder copy train/<class>.*download=True"):
        load_tensors("cifar100", "test", root=tmp_path / "nothing")
    write_tree(tmp_path / "cifar100", CIFAR100_CLASSES, {"train": 1, "test": 1}, fmt="PNG")
    for root in (tmp_path, tmp_path / "cifar100"):
        x, y = load_tensors("cifar100", "test", root=root)
        want_x, want_y = reference(tmp_path / "cifar100", "test", CIFAR100_CLASSES)
        assert torch.equal(x, want_x) and torch.equal(y, want_y) and y.tolist() == list(range(100))
    assert CIFAR100_CLASSES[:3] == ("apple", "aquarium_fish", "baby") and CIFAR100_CLASSES[-1] == "worm"
    (tmp_path / "cifar100" / "cifar-100-python").mkdir()  # torchvision's layout is preferred where present
    assert locate(dataset_info("cifar100"), tmp_path / "cifar100").kind == "torchvision"


@pytest.mark.skipif(SHARED_JPEG is None, reason="CIFAR-10 (JPEG copy) not available")
def test_real_cifar10_jpeg_test_split():
    x, y = load_tensors("cifar10-jpeg", "test", root=SHARED_JPEG)
    assert x.shape == (10000, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((10,), 1000))
    with tarfile.open(SHARED_JPEG / "cifar10-jpeg-test.tar.gz") as tar:  # spot check against PIL on the members
        for name, index in (("test/airplane/0000.jpg", 0), ("test/truck/0999.jpg", 9999), ("test/cat/0500.jpg", 3500)):
            want = np.asarray(Image.open(tar.extractfile(name)).convert("RGB"), dtype=np.float32) / 255
            assert torch.equal(x[index], torch.from_numpy(want).permute(2, 0, 1))
            assert int(y[index]) == CIFAR10_CLASSES.index(name.split("/")[1])
    assert dataset_fingerprint("cifar10-jpeg", SHARED_JPEG) == dataset_fingerprint("cifar10-jpeg", SHARED_JPEG)


def test_every_model_command_runs_on_a_users_image_folder(tmp_path, capsys):
    from snn_adv.cli import main

    write_tree(tmp_path / "data", ("a", "b"), {"train": 6, "test": 4}, size=None, fmt="PNG")
    spec = {"name": "imagefolder", "classes": ["a", "b"], "input_size": 8, "mean": [0.4, 0.5, 0.6], "std": 0.25}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    common = ["--data-root", str(tmp_path / "data"), "--no-progress"]
    paths = [tmp_path / f"{name}.pt" for name in ("ann", "conv", "bp")]
    assert main(["train-ann", "--arch", "vgg-tiny", "--epochs", "1", "--dataset", str(tmp_path / "spec.json"),
                 "--out", str(paths[0]), *common]) == 0
    assert main(["convert", str(paths[0]), "--timesteps", "4", "--calibration-images", "12", "--out", str(paths[1]),
                 *common]) == 0
    assert main(["train-snn", str(paths[1]), "--timesteps", "2", "--epochs", "1", "--out", str(paths[2]), *common]) == 0
    for path in paths:
        model = checkpoints.load(path)
        assert dataset_info(model.arch["dataset"]) == dataset_info(spec) and model.input_size == (8, 8)
    assert "test_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train-ann", "--dataset", '{"name": "imagefolder", "input_size": 8}', "--out", str(tmp_path / "x.pt")])
    assert "needs 'classes'" in capsys.readouterr().err
