"""Data for fine-tuning and evaluation: Fashion-MNIST (IDX files), image folders, tensors.

Fashion-MNIST (MIT) comes from the Debian package ``dataset-fashion-mnist``,
which installs the four IDX files under ``/usr/share/datasets/fashion-mnist``.
:func:`fetch_fashion_mnist` gets it: ``apt-get install`` when running as root,
else ``apt-get download`` + ``dpkg-deb -x`` into ``$SPARSEC_CACHE_DIR/datasets``.
Run it as ``python -m sparsec.passes.finetune.data fashion-mnist [--copy-to DIR]``.

Images are 28x28 grayscale. For ImageNet-style models they are resized
(bilinear) to ``size`` and repeated to 3 channels, then normalised with the
training set's mean and std (0.2860, 0.3530).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sparsec import knobs
from sparsec.passes.finetune.errors import DatasetError

log = logging.getLogger("sparsec.finetune")

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
DEB_PACKAGE = "dataset-fashion-mnist"
DEB_SUBDIR = Path("usr/share/datasets/fashion-mnist")
KNOWN_DATASETS = ("fashion-mnist",)
SYSTEM_DIRS = (Path("/") / DEB_SUBDIR,)  # where `apt-get install` puts the files

HOW_TO_GET = (f"install the Debian package: `apt-get install {DEB_PACKAGE}` (as root), or run "
              f"`python -m sparsec.passes.finetune.data fashion-mnist` (apt-get download + dpkg-deb -x into the "
              "sparsec cache dir), or pass --data-dir DIR holding the four *-ubyte.gz files")


# -- IDX files ---------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``0 0 type ndim``, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"'{path}' is not an IDX file", expected="magic bytes 00 00 <type> <ndim>",
                           actual=raw[:4].hex(" ") if raw else "an empty file", fix=HOW_TO_GET)
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = math.prod(dims)
    if len(raw) - offset != count * dtype.itemsize:
        raise DatasetError(f"'{path}' is truncated", expected=f"{count * dtype.itemsize} data bytes for {dims}",
                           actual=f"{len(raw) - offset} bytes", fix=HOW_TO_GET)
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


# -- finding and fetching Fashion-MNIST ---------------------------------------------------------

def _candidates(root: Path | None) -> list[Path]:
    cache = Path(knobs.get("cache_dir")) / "datasets"
    out = [root, root / DEB_SUBDIR] if root is not None else []
    return out + [cache / "fashion-mnist", cache / DEB_PACKAGE / DEB_SUBDIR, *SYSTEM_DIRS]


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for files in FASHION_FILES.values() for f in files)


def find_fashion_mnist(root: Path | str | None = None) -> Path:
    """The directory holding the four Fashion-MNIST IDX files, or a DatasetError saying how to get them."""
    root = Path(root) if root is not None else None
    tried = _candidates(root)
    for d in tried:
        if d is not None and _complete(d):
            return d
    raise DatasetError("the Fashion-MNIST dataset was not found",
                       expected=f"{', '.join(f for fs in FASHION_FILES.values() for f in fs)} in one of: "
                                + ", ".join(str(d) for d in tried),
                       actual="none of these directories holds all four files", fix=HOW_TO_GET)


def fetch_fashion_mnist(cache_dir: Path | None = None) -> Path:
    """Get the Debian package's IDX files; returns their directory (see the module docstring)."""
    try:
        return find_fashion_mnist()
    except DatasetError:
        pass
    if shutil.which("apt-get") is None:
        raise DatasetError("cannot fetch Fashion-MNIST: apt-get is not available", fix=HOW_TO_GET)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        proc = subprocess.run(["apt-get", "install", "-y", "-q", DEB_PACKAGE], capture_output=True, text=True)
        if proc.returncode == 0 and _complete(Path("/") / DEB_SUBDIR):
            return Path("/") / DEB_SUBDIR
        log.info("apt-get install %s failed (%s); extracting into the cache instead", DEB_PACKAGE,
                 proc.stderr.strip().splitlines()[-1:] or proc.returncode)
    dest = Path(cache_dir or Path(knobs.get("cache_dir")) / "datasets") / DEB_PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["apt-get", "download", DEB_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{DEB_PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise DatasetError(f"`apt-get download {DEB_PACKAGE}` failed", actual=proc.stderr.strip()[-300:],
                               fix="run `apt-get update` first, or " + HOW_TO_GET)
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True)
    if not _complete(dest / DEB_SUBDIR):
        raise DatasetError(f"the {DEB_PACKAGE} package did not hold the IDX files", actual=str(dest / DEB_SUBDIR))
    return dest / DEB_SUBDIR


def load_fashion_mnist(split: str, root: Path | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the ``train`` (60k) or ``test`` (10k) split."""
    if split not in FASHION_FILES:
        raise DatasetError(f"unknown Fashion-MNIST split '{split}'", expected="train or test", actual=split)
    d = find_fashion_mnist(root)
    images, labels = (read_idx(d / f) for f in FASHION_FILES[split])
    if images.shape[0] != labels.shape[0]:
        raise DatasetError("Fashion-MNIST images and labels disagree in count",
                           expected=f"{images.shape[0]} labels", actual=f"{labels.shape[0]}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# -- transforms ----------------------------------------------------------------------------------

def prepare_images(images: torch.Tensor, size: int, channels: int = 3, *, mean: float = FASHION_MEAN,
                   std: float = FASHION_STD, augment: bool = False, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """uint8 [B, H, W] -> float [B, channels, size, size]: bilinear resize, repeat channels, normalise.

    ``augment`` adds a random horizontal flip and a random translation of up
    to size/8 pixels (zero padding), drawn from ``generator``.
    """
    x = images.unsqueeze(1).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = (x - mean) / std
    if augment:
        b, pad = x.shape[0], max(1, size // 8)
        flip = torch.rand(b, generator=generator, device="cpu") < 0.5
        x = torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(-1), x)
        padded = F.pad(x, (pad, pad, pad, pad), value=(0 - mean) / std)
        dx, dy = (torch.randint(0, 2 * pad + 1, (b,), generator=generator) for _ in range(2))
        ar = torch.arange(size)
        rows = (dy.view(b, 1) + ar.view(1, size)).to(x.device)
        cols = (dx.view(b, 1) + ar.view(1, size)).to(x.device)
        x = padded.gather(2, rows.view(b, 1, size, 1).expand(b, 1, size, padded.shape[-1]))
        x = x.gather(3, cols.view(b, 1, 1, size).expand(b, 1, size, size))  # crop at (dy, dx)
    return x.expand(-1, channels, -1, -1).contiguous() if channels != 1 else x


class TensorBatches:
    """Batches of ``(x, y)`` drawn from tensors already on a device (no DataLoader, no copies).

    ``x`` is uint8 images [N, H, W] prepared per batch by :func:`prepare_images`.
    Each epoch shuffles with ``seed + epoch`` (call :meth:`set_epoch`). Under
    DDP, rank ``r`` of ``world`` takes every ``world``-th sample of the
    shuffled order, as ``DistributedSampler`` does.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, size: int = 28,
                 channels: int = 1, shuffle: bool = False, augment: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if images.shape[0] != labels.shape[0]:
            raise DatasetError("images and labels disagree in count",
                               expected=f"{images.shape[0]} labels", actual=f"{labels.shape[0]}")
        self.images, self.labels = images, labels
        self.batch_size, self.size, self.channels = batch_size, size, channels
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = self.images.shape[0]
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            idx = torch.arange(n)
        if self.world > 1:
            per = math.ceil(n / self.world)
            idx = torch.cat([idx, idx[: per * self.world - n]])[self.rank::self.world]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices().to(self.images.device)
        gen = torch.Generator().manual_seed(10_000 + self.seed + self.epoch)
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = prepare_images(self.images[sel], self.size, self.channels, augment=self.augment, generator=gen)
            yield x, self.labels[sel]


class ImageTensorDataset(torch.utils.data.Dataset):
    """A map-style Dataset over uint8 images [N, H, W] (for DataLoader / DistributedSampler)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int, channels: int = 3) -> None:
        self.images, self.labels, self.size, self.channels = images, labels, size, channels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        return prepare_images(self.images[i:i + 1], self.size, self.channels)[0], self.labels[i]


def check_dataset(name_or_dir: str, data_dir: str | None = None) -> None:
    """Fail early, before a model is loaded, when the data is not there (says how to get it)."""
    if name_or_dir in KNOWN_DATASETS:
        find_fashion_mnist(data_dir)
    elif not Path(name_or_dir).is_dir():
        raise DatasetError(f"dataset '{name_or_dir}' is neither a known dataset nor a directory",
                           expected=f"one of {', '.join(KNOWN_DATASETS)}, or an ImageFolder directory "
                                    "(one subfolder per class)",
                           actual=name_or_dir, fix="for fashion-mnist: " + HOW_TO_GET)


def open_dataset(name_or_dir: str, split: str, *, size: int, channels: int = 3, data_dir: str | None = None,
                 limit: int | None = None) -> torch.utils.data.Dataset:
    """A Dataset for the CLI: a known name (``fashion-mnist``) or an ImageFolder directory.

    An ImageFolder directory may hold ``train/`` and ``val/`` (or ``test/``)
    subfolders; ``split`` picks one, else the directory itself is used.
    """
    if name_or_dir in KNOWN_DATASETS:
        images, labels = load_fashion_mnist("train" if split == "train" else "test", data_dir)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return ImageTensorDataset(images, labels, size, channels)
    check_dataset(name_or_dir)
    root = Path(name_or_dir)
    names = ("train",) if split == "train" else ("val", "test")
    sub = next((root / s for s in names if (root / s).is_dir()), root)
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.Grayscale(channels) if channels == 1
                             else transforms.Lambda(lambda im: im.convert("RGB")), transforms.ToTensor(),
                             transforms.Normalize([0.5] * channels, [0.5] * channels)])
    try:
        ds = datasets.ImageFolder(str(sub), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"'{sub}' is not a usable image folder", actual=str(exc).splitlines()[0],
                           fix="lay it out as DIR/<class name>/<image files>") from exc
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    return ds


def first_input_shape(data) -> tuple[int, ...] | None:
    """The shape of one sample's input, from a Dataset or a batch iterable (None if unknown)."""
    try:
        if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__getitem__"):
            return tuple(data[0][0].shape)
        x = next(iter(data))[0]
        return tuple(x.shape[1:])
    except Exception:
        return None


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sparsec.passes.finetune.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=KNOWN_DATASETS)
    ap.add_argument("--copy-to", type=Path, help="also copy the IDX .gz files here (e.g. .devcache/fashion-mnist)")
    args = ap.parse_args(argv)
    d = fetch_fashion_mnist()
    print(d)
    for files in FASHION_FILES.values():
        for f in files:
            print(f"  {d / f}")
            if args.copy_to is not None:
                args.copy_to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(d / f, args.copy_to / f)


if __name__ == "__main__":
    _main()
