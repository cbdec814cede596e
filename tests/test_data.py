"""Proxy data: stratified, deterministic subsets from every supported layout, and one clear line for bad folders."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastvit_nas.cli import main
from fastvit_nas.search import DataError, load_data
from fastvit_nas.search import data as data_module


def _cifar10(folder, labels, num_names=10):
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    with (folder / "data_batch_1").open("wb") as fh:
        pickle.dump({"data": data, "labels": list(labels)}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(num_names)]}, fh)
    return folder


def _image_tree(root, classes=3, per_class=4, mode="L"):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            shape = (20, 30) if mode == "L" else (20, 30, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"class{c}" / f"{i}.png")
    return root


def test_fashion_mnist_subset_is_stratified_disjoint_and_deterministic():
    data = load_data(img_size=32, train_per_class=12, val_per_class=4, seed=1)
    assert data.train_x.shape == (120, 1, 32, 32) and data.val_x.shape == (40, 1, 32, 32)
    assert data.num_classes == 10 and data.in_chans == 1
    assert np.bincount(data.train_y.numpy()).tolist() == [12] * 10
    assert np.bincount(data.val_y.numpy()).tolist() == [4] * 10
    train_rows = {bytes(x.numpy()) for x in data.train_x}
    assert not any(bytes(x.numpy()) in train_rows for x in data.val_x)
    again = load_data(img_size=32, train_per_class=12, val_per_class=4, seed=1)
    assert again.fingerprint == data.fingerprint
    assert load_data(img_size=32, train_per_class=12, val_per_class=4, seed=2).fingerprint != data.fingerprint
    assert load_data(img_size=40, train_per_class=12, val_per_class=4, seed=1).img_size == 40


def test_cifar10_and_cifar100_layouts(tmp_path):
    data = load_data(_cifar10(tmp_path / "c10", [i % 10 for i in range(40)]), train_per_class=2, val_per_class=1)
    assert data.in_chans == 3 and data.num_classes == 10 and len(data.train_y) == 20 and len(data.val_y) == 10
    c100 = tmp_path / "c100"
    c100.mkdir()
    with (c100 / "train").open("wb") as fh:
        pickle.dump({"data": np.zeros((200, 3072), np.uint8), "fine_labels": [i % 100 for i in range(200)]}, fh)
    with (c100 / "meta").open("wb") as fh:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, fh)
    assert load_data(c100, train_per_class=1, val_per_class=1).num_classes == 100


def test_image_folder_channels_come_from_the_data(tmp_path):
    gray = load_data(_image_tree(tmp_path / "gray"), img_size=16, train_per_class=3, val_per_class=1)
    assert gray.in_chans == 1 and gray.num_classes == 3 and gray.train_x.shape[1:] == (1, 16, 16)
    rgb = load_data(_image_tree(tmp_path / "rgb" / "train", mode="RGB").parent, img_size=16)
    assert rgb.in_chans == 3 and len(rgb.train_y) + len(rgb.val_y) == 12


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "no class folders"),
    (lambda p: (p / "cat").mkdir(parents=True), "holds no images"),
    (lambda p: _cifar10(p, [0, 1, 2, 12]), "label 12 out of range for 10 classes"),
    (lambda p: (_image_tree(p, classes=2, per_class=2), (p / "class1" / "0.png").write_bytes(b"not a png")),
     "unreadable image"),
    (lambda p: (p.mkdir(), (p / "data_batch_1").write_bytes(b"garbage")), "unreadable CIFAR batch"),
])
def test_bad_folders_get_one_clear_error(tmp_path, make, message):
    make(tmp_path / "bad")
    with pytest.raises(DataError, match=message):
        load_data(tmp_path / "bad", img_size=16)


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*--data PATH"):
        load_data()


def test_cli_bad_data_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["proxy", "eval", "t8", "--data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no class folders" in err and "\n" not in err


def test_cli_entry_point_has_no_traceback(tmp_path):
    _cifar10(tmp_path / "c10", [0, 1, 99])
    out = subprocess.run([sys.executable, "-m", "fastvit_nas.cli", "proxy", "eval", "t8", "--data",
                          str(tmp_path / "c10")], capture_output=True, text=True)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "label 99 out of range" in lines[0] and "Traceback" not in out.stderr
