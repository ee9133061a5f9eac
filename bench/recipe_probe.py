"""Probe: can a torchvision backbone, trained from scratch, learn a prepared collection at all?

A quick loop outside the pipeline (no Prefect, no checkpoints): it reads a prepared folder's
``manifest.parquet`` and PNGs, trains a network from random initialisation on the ``train``
split (batch 16, random horizontal and vertical flips, BCE, Adam), and prints after each epoch
the training loss and the ROC AUC on the ``validation`` and ``test`` splits, beside the trivial
brightness score chosen on validation (:func:`tasks.evaluate.trivial_scores.choose_score`) on the
test split. It answers "is the signal learnable with these images, and by which network", before
a whole ``tomoflow run`` or ``make bench-transfer`` is spent on a recipe.

Usage::

    .venv/bin/python bench/recipe_probe.py PREPARED_DIR [--arch resnet18|vgg16_bn|small|tomoflow]
        [--backbone resnet18] [--dropout 0.5]
        [--lr 0.001] [--epochs 30] [--size 96] [--threads 1] [--seed 0]

``small`` is a 4-layer CNN (16-32-64-64 convolutions with BatchNorm, global average pooling):
a control that the images hold a learnable signal, not a tomoflow backbone.

Measured on the decoy ``moderate`` (``tomoflow synth --difficulty moderate --positive-fraction 0.5``,
128 x 96 frames, ``tomoflow prepare --strategy single-slice --image-size 96``; 1 thread):

* 400 patients, seed 101 (240 / 80 / 80 images; trivial 0.602 on test): ``small`` test 0.886
  at epoch 20 and 0.921 at epoch 30 (1.6 s per epoch); ``resnet18`` overfits (training loss
  0.07 at epoch 60, test 0.63-0.76; 7 s per epoch).
* 1000 patients, seed 303 (700 / 150 / 150 images; trivial 0.514 on test): ``resnet18`` test
  0.935 at epoch 25 (validation 0.937; 18 s per epoch).
* the same folder, ``--arch tomoflow`` (``build_model``'s ResNet-18 and its ``single`` head, which
  the pipeline trains): with the head's default dropout of 0.5 the output was constant from
  epoch 5 (validation AUC 0.500: the head's ReLU units died); with ``--dropout 0`` test 0.906 at
  epoch 13. Hence ``configs/cpu-scratch.yaml``'s ``dropout: 0.0``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image
from sklearn.metrics import roc_auc_score

from tasks.core.backbone_names import BACKBONE_NAMES
from tasks.evaluate.trivial_scores import choose_score, score_images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prepared", type=Path, help="A prepared folder (tomoflow prepare --out): manifest.parquet and PNGs.")
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "vgg16_bn", "small", "tomoflow"],
                   help="The network; tomoflow is build_model's classifier (--backbone, head single).")
    p.add_argument("--backbone", default="resnet18", choices=BACKBONE_NAMES, help="tomoflow only: the backbone (default: resnet18).")
    p.add_argument("--dropout", type=float, default=0.5, help="tomoflow only: the head's dropout (default: 0.5).")
    p.add_argument("--lr", type=float, default=0.001, help="Adam's learning rate (default: 0.001).")
    p.add_argument("--epochs", type=int, default=30, help="Epochs (default: 30).")
    p.add_argument("--size", type=int, default=96, help="Input side in pixels (default: 96).")
    p.add_argument("--threads", type=int, default=1, help="Torch threads (default: 1).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the initialisation and batches (default: 0).")
    return p.parse_args(argv)


def load_split(manifest: pd.DataFrame, root: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images as N x 3 x size x size floats in [0, 1], and its labels."""
    rows = manifest[manifest["split"].eq(split)]
    images = np.stack([np.asarray(Image.open(root / p).convert("L").resize((size, size), Image.BILINEAR),
                                  dtype=np.float32) / 255 for p in rows["image_path"]])
    return (torch.from_numpy(images)[:, None].repeat(1, 3, 1, 1),
            torch.tensor(rows["label"].to_numpy(), dtype=torch.float32))


class _Classifier(torch.nn.Module):
    """tomoflow's classifier behind the probe's normalised 3-channel input: it takes one [0, 1] channel."""

    def __init__(self, net: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :1] * self.std + self.mean)[:, None]


def build(arch: str, args: argparse.Namespace, mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Module:
    """A network with one output logit, from random initialisation."""
    if arch == "tomoflow":
        from models.nets.classifier import build_model

        return _Classifier(build_model(model=args.backbone, weights=None, image_size=args.size,
                                       dropout=args.dropout, seed=args.seed), mean, std)
    if arch == "small":
        def block(i: int, o: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        return torch.nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), *block(64, 64),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 1))
    return getattr(torchvision.models, arch)(num_classes=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    manifest = pd.read_parquet(args.prepared / "manifest.parquet")
    manifest = manifest[manifest["augmented_from"].isna()] if "augmented_from" in manifest else manifest
    (xtr, ytr), (xva, yva), (xte, yte) = (load_split(manifest, args.prepared, s, args.size)
                                          for s in ("train", "validation", "test"))
    test_rows = manifest[manifest["split"].eq("test")].reset_index(drop=True)
    trivial = choose_score(manifest[manifest["split"].eq("validation")], args.prepared)
    floor = roc_auc_score(test_rows["label"], score_images(test_rows, args.prepared)[trivial]) if trivial else None
    print(f"{args.arch}: {len(xtr)} / {len(xva)} / {len(xte)} images; trivial score {trivial} on test: "
          f"{'-' if floor is None else f'{floor:.3f}'}")
    mean, std = xtr.mean(), xtr.std()
    net = build(args.arch, args, mean, std)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)

    def probabilities(x: torch.Tensor) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            return torch.cat([net((x[i:i + 64] - mean) / std).squeeze(1) for i in range(0, len(x), 64)]).sigmoid().numpy()

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(xtr)).split(16):
            batch = xtr[idx].clone()
            for dim in (-1, -2):
                flip = torch.rand(len(idx)) < 0.5
                batch[flip] = batch[flip].flip(dim)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net((batch - mean) / std).squeeze(1), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch}: train loss {total / len(xtr):.4f}, validation AUC {roc_auc_score(yva, probabilities(xva)):.3f}, "
              f"test AUC {roc_auc_score(yte, probabilities(xte)):.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
