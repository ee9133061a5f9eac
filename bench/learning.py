"""Benchmark: does the CNN learn more than brightness? CNN vs the trivial score on a ``moderate`` collection.

On the demo's ``easy`` lesions a brightness filter already reaches ROC AUC 1.0, so the demo
cannot show whether a change to the pipeline helps. This benchmark writes a ``moderate``
collection (``tomoflow synth --difficulty moderate``: lesions 2.5 texture SDs bright among
brighter normal ducts and dense patches and, since issue 26, lesion-bright elongated decoys in
every volume), where the best trivial score (:mod:`tasks.evaluate.trivial_scores`) stays at an
image-level ROC AUC of 0.46-0.68 (issue 19's version without decoys: about 0.7), runs the
whole ``tomoflow-pipeline`` flow on the CPU (the ``cpu-scratch`` preset, with the
settings below over it: by default VGG16 with batch normalisation, as every row below was measured) and prints, from the evaluation's ``metrics.json``:

* the CNN's and the trivial score's image-level ROC AUC on the test split (the trivial
  score chosen on the validation split), and at patient level;
* the difference CNN - trivial with its **paired** patient-bootstrap 95% interval (both AUCs
  on the same resampled patients);
* the settings and the wall time.

Target (issue 19): the trivial score's image-level AUC <= 0.80 and the CNN ahead by >= 0.05
with the interval's lower end above 0, within 20 minutes on 2 CPU cores. The script exits 1
when the target is missed (and says by how much), 0 when it is met.

Usage::

    .venv/bin/python bench/learning.py [--out DIR] [--patients 400] [--epochs 20] [--image-size 64]
        [--png-size 96] [--lr 0.001] [--batch-size 16] [--optimizer sgd] [--augment flips|off|full]
        [--difficulty moderate] [--seed 0]

or ``make bench-learning``.

Measured (issue 19, on its ``moderate`` without decoys; this project's 2-core CPU, shared with other test runs; load = ``uptime``'s
1-minute average at start -> end; the settings not named are the defaults above: 64 px input,
96 px PNGs, SGD lr 0.001 (backbone 0.01), batch 16, single-slice, 128 x 96 frames; "test" is
the test split's images, one per patient):

seed  patients  epochs  augment  test  trivial  CNN    CNN - trivial [paired 95%]  wall    load         target
0     240       12      full     48    0.709    0.682  -0.027 [-0.132, +0.065]     5.3 m   1.6 -> 3.0   missed
0     400       20      full     80    0.720    0.702  -0.018 [-0.083, +0.038]    15.2 m   4.1 -> 4.0   missed
0     400       20      off      80    0.720    0.811  +0.091 [+0.009, +0.181]     5.9 m   2.5 -> 1.8   MET
1     400       20      off      80    0.741    0.756  +0.015 [-0.092, +0.121]     8.6 m   4.0 -> 3.6   missed
1     400       20      flips    80    0.741    0.853  +0.112 [-0.010, +0.240]     6.5 m   2.0 -> 1.7*  missed (lower end)
0     400       20      flips    80    0.720    0.807  +0.087 [+0.005, +0.167]     5.4 m   1.1 -> 1.8   MET
2     400       20      flips    80    0.699    0.827  +0.128 [+0.019, +0.235]     5.3 m   1.1 -> 1.7   MET

* alongside a 2-minute test run.

Issue 26 (``moderate`` with lesion-bright Gaussian decoys, commit 0f330ae; same defaults):
seed 7, 400 patients, 20 epochs, flips: test 80 images, trivial 0.551, CNN 0.528,
CNN - trivial -0.023 [-0.103, +0.063], 36 min at load 8-10: MISSED. The scratch VGG16-BN never
left the constant model (train loss 0.693 in every epoch), whereas a 4-layer CNN with Adam
reaches test AUC 0.93 on the same kind of images in 12 epochs: with brightness matched, this
recipe's 300 optimiser steps do not find the shape cue. Open: a recipe with more steps (issue
26's early stopping with a minimum of steps), a lighter backbone, or brighter lesions (the
decoys follow the lesions' brightness, so the floor stays low).

(Also tried at 240 patients, 30 epochs, full augmentation: SGD at lr 0.003 and Adam at 1e-4,
both still at chance after 5-8 epochs and stopped; and 40 epochs, stopped when an epoch took
55 s while a test suite ran beside it.) With the preset's full online augmentation
(rotations up to 90 degrees, zoom, shifts, brightness) the scratch network stayed at the
trivial score's AUC; without rotations it learns the lesions' shape, and random flips alone
(the default) did best. At the defaults the CNN beats the trivial score by 0.09-0.13 AUC on
seeds 0-2 and the target is met on seeds 0 and 2; with 80 test patients the paired
interval's lower end sits near 0 (+0.005, -0.010, +0.019), so seed 1 misses it by 0.010:
met on most draws, not on every one. An epoch takes about
12 s on the quiet machine and up to 55 s while a test suite runs beside it, so a
run takes 5-7 minutes quiet and up to about 20 loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tasks.core.backbone_names import BACKBONE_NAMES

#: The target of issue 19.
MAX_TRIVIAL_AUC = 0.80
MIN_MARGIN = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    p.add_argument("--patients", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", default="moderate", choices=["easy", "moderate", "subtle"])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=64, help="network input side")
    p.add_argument("--png-size", type=int, default=96, help="prepared PNG side")
    p.add_argument("--model", default="vgg16_bn", choices=BACKBONE_NAMES,
                   help="the scratch backbone (the preset's own is resnet18)")
    p.add_argument("--lr", type=float, default=0.001, help="head learning rate (backbone: x10, the scratch recipe)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="sgd with momentum (the study) or adam")
    p.add_argument("--strategy", default="single-slice")
    p.add_argument("--augment", nargs="?", const="full", default="flips", choices=["off", "flips", "full"],
                   help="online augmentation: flips (default: random horizontal and vertical flips only), off, or full "
                        "(the preset's flips, rotations up to 90 degrees, zoom, shifts, brightness, which kept the "
                        "scratch network at the trivial score's AUC on this small collection)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, out: Path) -> dict:
    """Write the collection, run the pipeline, and read the comparison from metrics.json."""
    from tasks.infra.process_defaults import apply_process_defaults

    apply_process_defaults()  # as the tomoflow command does, before Prefect is imported
    from flows.prefect_env import apply_prefect_defaults
    from flows.pipeline import tomoflow_pipeline
    from synth.generate import generate_dataset
    from tasks.core.config import AugmentConfig

    start = time.perf_counter()
    data = out / "data"
    summary = generate_dataset(data, patients=args.patients, seed=args.seed, rows=128, columns=96, frames=(8, 16),
                               positive_fraction=0.5, reports=False, difficulty=args.difficulty)
    synth_s = time.perf_counter() - start
    config = {
        # Half the patients positive: the collection's positive volumes without a box (a trap it
        # keeps from BCS-DBT) then pass the 10% reject limit; they are still counted in rejects.
        "data": {"max_reject_fraction": 0.25},
        "slices": {"strategy": args.strategy, "image_size": args.png_size, "split_fractions": [0.6, 0.2, 0.2]},
        "model": {"model": args.model},
        "train": {"epochs": args.epochs, "image_size": args.image_size, "lr": args.lr, "backbone_lr_factor": 10,
                  "batch_size": args.batch_size, "optimizer": args.optimizer, "device": "cpu"},
        # The preset augments with flips only; "full" restores the study's defaults (AugmentConfig).
        "augment": {"online": args.augment != "off",
                    **({"max_rotation": 0.0, "zoom": [1.0, 1.0], "shift": 0.0, "brightness": 0.0}
                       if args.augment == "flips" else
                       AugmentConfig().model_dump(mode="json", include={"max_rotation", "zoom", "shift", "brightness"})
                       if args.augment == "full" else {})},
        "evaluate": {"bootstrap": 1000},
    }
    apply_prefect_defaults()  # Prefect's temporary server, with the CLI's start-up patience
    result = tomoflow_pipeline(data_root=str(data), output_root=str(out / "outputs"), preset="cpu-scratch",
                               config=config)
    wall = time.perf_counter() - start
    metrics = json.loads(Path(result["metrics"]).read_text())
    trivial = metrics["trivial"]
    image, patient = trivial["levels"]["slice"], trivial["levels"]["patient"]
    return {
        "settings": {**vars(args), "out": str(out), "scratch_note": result.get("note")},
        "lesion_visibility": summary["lesion_visibility"]["contrast_to_texture"],
        "test_images": metrics["levels"]["slice"]["n"], "test_patients": metrics["levels"]["patient"]["n"],
        "cnn_auc": image["model_roc_auc"], "cnn_auc_interval": metrics["levels"]["slice"]["intervals"]["roc_auc"],
        "trivial_score": trivial["score"], "trivial_chosen_on": trivial["chosen_on"],
        "trivial_auc": image["roc_auc"], "trivial_auc_interval": image["roc_auc_interval"],
        "difference": image["model_minus_trivial"], "difference_interval": image["difference_interval"],
        "patient_cnn_auc": patient["model_roc_auc"], "patient_trivial_auc": patient["roc_auc"],
        "degenerate": metrics["degenerate"], "report": result["report"],
        "synth_s": round(synth_s, 1), "wall_s": round(wall, 1),
    }


def verdict(r: dict) -> tuple[bool, str]:
    """Whether the target is met, in one line."""
    diff, interval = r["difference"], r["difference_interval"]
    if diff is None:
        return False, "no difference: the test split lacks a class"
    low = interval[0] if interval else diff
    met = r["trivial_auc"] <= MAX_TRIVIAL_AUC and diff >= MIN_MARGIN and low > 0
    return met, (f"{'MET' if met else 'MISSED'}: trivial AUC {r['trivial_auc']:.3f} (target <= {MAX_TRIVIAL_AUC}), "
                 f"CNN - trivial {diff:+.3f} (target >= {MIN_MARGIN}), paired 95% interval lower end {low:+.3f} "
                 "(target > 0)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tomoflow-bench-learning-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        r = run(args, out)
    fmt = lambda iv: "n/a" if not iv else f"[{iv[0]:.3f}, {iv[1]:.3f}]"  # noqa: E731
    print(f"collection: {args.patients} patients, {args.difficulty} (lesion contrast {r['lesion_visibility']} texture "
          f"SDs); test split {r['test_images']} images / {r['test_patients']} patients")
    print(f"CNN (image level):     ROC AUC {r['cnn_auc']:.3f} {fmt(r['cnn_auc_interval'])}")
    print(f"trivial ({r['trivial_score']}, chosen on {r['trivial_chosen_on']}): ROC AUC {r['trivial_auc']:.3f} "
          f"{fmt(r['trivial_auc_interval'])}")
    print(f"CNN - trivial:         {r['difference']:+.3f} paired patient bootstrap {fmt(r['difference_interval'])}")
    print(f"patient level:         CNN {r['patient_cnn_auc']:.3f}, trivial {r['patient_trivial_auc']:.3f}")
    print(f"wall time {r['wall_s']:.0f} s (synth {r['synth_s']:.0f} s); settings {json.dumps(r['settings'])}")
    met, line = verdict(r)
    print(line)
    print(json.dumps(r, default=str))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
