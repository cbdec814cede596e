"""Proxy data: a small, stratified, in-memory image set at the proxy resolution.

Proxy training must be cheap and repeatable, so every source (Fashion-MNIST idx files, CIFAR-10/100
python pickles, an ImageFolder tree) is reduced once to the same thing: a per-class subset of the *training*
split, split again into train and validation (the source's test split is never read, so nothing used for
scoring leaks into a final evaluation), resized to the proxy resolution and held as uint8 tensors. The
`fingerprint` hashes those exact tensors, so cached scores are keyed by the data they were trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from ..errors import FastVitNasError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the idx files: the embedded default data set."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(FastVitNasError):
    """A data folder that is not what it claims to be (missing, empty, unreadable, inconsistent)."""


@dataclass(frozen=True)
class ProxyData:
    """Train/validation tensors at the proxy resolution: images uint8 (N, C, H, W), labels int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train_x.shape[-1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images → float, standardised with the training subset's per-channel statistics."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def summary(self) -> dict:
        return {"name": self.name, "train": len(self.train_y), "val": len(self.val_y),
                "classes": self.num_classes, "in_chans": self.in_chans, "img_size": self.img_size,
                "fingerprint": self.fingerprint}


# ---- readers: each returns (labels, loader) where loader(indices) -> uint8 (n, C, H, W) at proxy size ------
def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One idx file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: unreadable idx file ({exc})") from None
    ndim = magic & 0xFF
    header = np.frombuffer(raw[:4 + 4 * ndim], dtype=">u4") if len(raw) >= 4 + 4 * ndim else np.array([])
    if len(header) != 1 + ndim or int(header[0]) != magic:
        raise DataError(f"{path}: not an idx file with magic {magic}")
    dims = [int(d) for d in header[1:]]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _idx_source(folder: Path):
    image_file, label_file = _find(folder, "train-images-idx3-ubyte"), _find(folder, "train-labels-idx1-ubyte")
    if image_file is None or label_file is None:
        raise DataError(f"{folder}: needs both train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
    images = _read_idx(image_file, 2051)
    labels = _read_idx(label_file, 2049).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} training images but {len(labels)} labels")
    return labels, int(labels.max()) + 1 if len(labels) else 0, lambda idx: torch.from_numpy(images[idx][:, None])


def _unpickle(path: Path) -> dict:
    """CIFAR's own format is a python pickle; we only ever read it, never write one."""
    try:
        with path.open("rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: unreadable CIFAR batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _cifar_source(folder: Path):
    """CIFAR-10 (`data_batch_1..5` + `batches.meta`) or CIFAR-100 (`train` + `meta`) python folders."""
    if (folder / "data_batch_1").is_file():
        batches, label_key = sorted(folder.glob("data_batch_[0-9]*")), "labels"
        meta, names_key, default_classes = folder / "batches.meta", "label_names", 10
    else:
        batches, label_key = [folder / "train"], "fine_labels"
        meta, names_key, default_classes = folder / "meta", "fine_label_names", 100
    num_classes = len(_unpickle(meta).get(names_key, [])) if meta.is_file() else default_classes
    num_classes = num_classes or default_classes
    data, labels = [], []
    for path in batches:
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path}: missing 'data' or '{label_key}' (keys: {', '.join(map(str, batch))})")
        x, y = np.asarray(batch["data"]), np.asarray(batch[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise DataError(f"{path}: expected data of shape (N, 3072) with N labels, got {x.shape} and {len(y)}")
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            raise DataError(f"{path}: label {int(y[bad][0])} out of range for {num_classes} classes")
        data.append(x.astype(np.uint8).reshape(-1, 3, 32, 32))
        labels.append(y)
    images = np.concatenate(data)
    return np.concatenate(labels), num_classes, lambda idx: torch.from_numpy(images[idx])


def _load_image(path: Path, size: int) -> np.ndarray:
    """Shorter side to `size`, centre crop: the usual ImageNet-style framing, once, at load time."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _image_folder_source(folder: Path, size: int):
    """`class_name/image` tree (a `train/` subfolder is used when present, never `val/` or `test/`)."""
    root = folder / "train" if (folder / "train").is_dir() else folder
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected ImageFolder layout root/<class>/<image>)")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in cls.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"{cls}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)

    def load(idx: np.ndarray) -> torch.Tensor:
        arrays = [_load_image(files[i], size) for i in idx]
        chans = max(a.shape[0] for a in arrays)
        return torch.from_numpy(np.stack([np.repeat(a, chans // a.shape[0], axis=0) for a in arrays]))

    return np.asarray(labels, dtype=np.int64), len(classes), load


def _source(data: str | Path | None, size: int):
    if data is None or str(data) == "fashion-mnist":
        if _find(FASHION_MNIST_DIR, "train-images-idx3-ubyte") is None:
            raise DataError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run `apt-get install "
                            "dataset-fashion-mnist` or pass --data PATH (idx, CIFAR or ImageFolder folder)")
        return "fashion-mnist", _idx_source(FASHION_MNIST_DIR)
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected Fashion-MNIST idx, CIFAR python or ImageFolder)")
    if _find(folder, "train-images-idx3-ubyte"):
        return folder.name, _idx_source(folder)
    if (folder / "data_batch_1").is_file() or ((folder / "train").is_file() and (folder / "meta").is_file()):
        return folder.name, _cifar_source(folder)
    return folder.name, _image_folder_source(folder, size)


# ---- subset, resize, fingerprint ---------------------------------------------------------------------------
def _stratified(labels: np.ndarray, num_classes: int, train_per_class: int, val_per_class: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: shuffle with the seed, the first `val_per_class` validate, the next `train_per_class` train."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise DataError(f"class {c} has {len(members)} training images; need at least 2 (train + validation)")
        members = rng.permutation(members)
        n_val = min(val_per_class, max(1, len(members) * val_per_class // (val_per_class + train_per_class)))
        val.append(members[:n_val])
        train.append(members[n_val:n_val + train_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def _fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_data(data: str | Path | None = None, *, img_size: int = 32, train_per_class: int = 100,
              val_per_class: int = 30, seed: int = 0) -> ProxyData:
    """Load a stratified train/validation subset of `data` (default: Fashion-MNIST) at `img_size` pixels.

    `data` is a folder holding Fashion-MNIST-style idx files, a CIFAR-10/100 python folder or an ImageFolder
    tree. Only the training split is read; validation is carved from it with `seed`.
    """
    if img_size < 8 or train_per_class < 1 or val_per_class < 1:
        raise DataError("img_size must be >= 8 and train/val images per class >= 1")
    name, (labels, num_classes, load) = _source(data, img_size)
    if len(labels) == 0 or num_classes < 2:
        raise DataError(f"{name}: needs at least two classes with images, found {num_classes}")
    train_idx, val_idx = _stratified(labels, num_classes, train_per_class, val_per_class, seed)
    x = _resize(load(np.concatenate([train_idx, val_idx])), img_size)
    train_x, val_x = x[:len(train_idx)], x[len(train_idx):]
    train_y, val_y = torch.from_numpy(labels[train_idx]), torch.from_numpy(labels[val_idx])
    scaled = train_x.float() / 255.0
    mean = tuple(scaled.mean(dim=(0, 2, 3)).tolist())
    std = tuple(s if s > 1e-6 else 1.0 for s in scaled.std(dim=(0, 2, 3)).tolist())
    return ProxyData(name=name, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y,
                     num_classes=num_classes, mean=mean, std=std,
                     fingerprint=_fingerprint(train_x, train_y, val_x, val_y))
