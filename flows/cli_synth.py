"""The ``tomoflow synth`` and ``tomoflow demo`` commands: a synthetic BCS-DBT-shaped collection, and
the whole pipeline on one (``make demo``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_synth(args: argparse.Namespace) -> int:
    """Write the collection and print its summary (JSON, one line)."""
    from synth.generate import generate_dataset

    frames = None
    if args.frames:
        lo, _, hi = args.frames.partition("-")
        frames = (int(lo), int(hi or lo))
    summary = generate_dataset(
        args.out,
        patients=args.patients,
        seed=args.seed,
        full_size=args.full_size,
        frames=frames,
        positive_fraction=args.positive_fraction,
        reports=not args.no_reports,
        difficulty=getattr(args, "difficulty", "easy"),
        lesion_contrast=getattr(args, "lesion_contrast", None),
        lesion_size=getattr(args, "lesion_size", None),
        lesion_count=getattr(args, "lesion_count", None),
        **({"rows": args.rows, "columns": args.columns} if args.rows and args.columns else {}),
    )
    # The per-volume details (drift, rotation, laterality ground truth) are for tests.
    print(json.dumps({k: v for k, v in summary.items() if k != "details"}, sort_keys=True, default=str))
    return 0


#: Frames per synthetic volume in the demo (as MIN-MAX): the demo uses one slice of each
#: volume, and writing thinner volumes halves the time spent making its dataset.
DEMO_FRAMES = "8-16"


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic data, then the pipeline with the ``demo`` preset; exit 1 when the classifier did not learn."""
    out = Path(args.out)
    data = out / "data"
    print(f"[demo] writing a synthetic BCS-DBT dataset to {data}", flush=True)
    synth = argparse.Namespace(
        out=data, patients=args.patients, seed=args.seed, full_size=False, frames=DEMO_FRAMES,
        positive_fraction=0.3, no_reports=False, rows=None, columns=None,
    )
    cmd_synth(synth)
    print("[demo] running the tomoflow-pipeline flow (preset 'demo': prepare, train, evaluate) on the CPU",
          flush=True)
    from flows.pipeline import tomoflow_pipeline

    result = tomoflow_pipeline(data_root=str(data), output_root=str(out / "outputs"), preset="demo")
    if result.get("note"):
        print(f"[demo] NOTE: {result['note']}")
    print(f"[demo] manifest: {result['manifest']}")
    print(f"[demo] metrics:  {result['metrics']}")
    print(f"[demo] report:   {result['report']}")
    verdict, learned = demo_verdict(json.loads(Path(result["metrics"]).read_text()))
    print(f"[demo] {verdict}", flush=True)
    return 0 if learned else 1


#: What the demo's classifier must reach on its test split, per image, to count as learned.
DEMO_MIN_AUC = 0.90


DEMO_MIN_ACCURACY = 0.80


def demo_verdict(metrics: dict) -> tuple[str, bool]:
    """Whether the demo's classifier separates tumour from normal, in one line.

    The image (slice) is the unit: patient-level figures aggregate a patient's images and
    can flatter. The demo's lesions are plainly visible, so a classifier that learned
    anything reaches :data:`DEMO_MIN_AUC` and :data:`DEMO_MIN_ACCURACY`; one at chance
    (as VGG16 without batch normalisation trained from scratch at lr 0.001 was) does not,
    and the demo then fails instead of printing chance figures as a result.

    Args:
        metrics: ``metrics.json`` of the evaluation.

    Returns:
        ``(line, learned)``.
    """
    level = (metrics.get("levels") or {}).get("slice") or {}
    values = level.get("metrics") or {}

    def fmt(name: str) -> str:
        value = values.get(name)
        return "n/a" if value is None else f"{value:.3f}"

    figures = (f"test split, per image ({level.get('n', 0)} images, {level.get('n_positive', 0)} with a tumour): "
               f"ROC AUC {fmt('roc_auc')}, accuracy {fmt('accuracy')}, sensitivity {fmt('sensitivity')}, "
               f"specificity {fmt('specificity')}")
    trivial = ((metrics.get("trivial") or {}).get("levels") or {}).get("slice") or {}
    if trivial.get("roc_auc") is not None:
        # The floor beside the figures: on easy lesions a brightness filter alone reaches about 1.0.
        figures += (f"; trivial brightness score ({metrics['trivial'].get('score')}) ROC AUC "
                    f"{trivial['roc_auc']:.3f}, the classifier "
                    + ("beats it" if trivial.get("beats_trivial") else "does NOT beat it"))
    auc, accuracy = values.get("roc_auc"), values.get("accuracy")
    learned = auc is not None and accuracy is not None and auc >= DEMO_MIN_AUC and accuracy >= DEMO_MIN_ACCURACY
    if learned:
        return (f"{figures}: the classifier separates tumour from normal on these synthetic lesions "
                f"(target ROC AUC >= {DEMO_MIN_AUC:.2f}, accuracy >= {DEMO_MIN_ACCURACY:.2f})."), True
    return (f"FAILED: {figures}, below the demo's target (ROC AUC >= {DEMO_MIN_AUC:.2f}, accuracy >= "
            f"{DEMO_MIN_ACCURACY:.2f}): the classifier did not learn to separate the synthetic lesions. See the "
            "learning curves in the report."), False


def add_synth(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow synth`` command."""
    p = sub.add_parser("synth", help="Write a synthetic, BCS-DBT-shaped dataset.")
    p.add_argument("out", type=Path, help="The folder the collection is written to.")
    p.add_argument("--patients", type=int, default=40, help="The number of patients (default 40).")
    p.add_argument("--seed", type=int, default=0, help="The random seed; the same seed writes the same bytes "
                                                       "(default 0).")
    p.add_argument("--full-size", action="store_true", help="Write 2457 x 1890 frames, as in BCS-DBT.")
    p.add_argument("--rows", type=int, default=None, help="Rows per frame (default: a small size for tests; give "
                                                          "--columns too).")
    p.add_argument("--columns", type=int, default=None, help="Columns per frame (default: a small size for tests; "
                                                             "give --rows too).")
    p.add_argument("--frames", default=None, help="Frames per volume as MIN-MAX, such as 49-95.")
    p.add_argument("--positive-fraction", type=float, default=None,
                   help="The fraction of positive (benign or cancer) patients, split about evenly between the two "
                        "(default 0.4, at least 2 benign and 2 cancer). With the default 70/15/15 splits a "
                        "100-patient collection then has 6 positive patients in test and in validation.")
    p.add_argument("--no-reports", action="store_true", help="Do not write reports.csv.")
    p.add_argument("--difficulty", default="easy", choices=["easy", "moderate", "subtle"],
                   help="How hard the lesions are to see: with easy (the default) they are plainly visible; with "
                        "moderate they lie among bright normal ducts, dense patches and lesion-bright elongated "
                        "decoys, where the trivial brightness score's image-level ROC AUC measured 0.46-0.68 (seeds "
                        "100-114, positive fractions 0.1-0.8, 64/96/224 px single-slice images) while the lesions' "
                        "compact shape still tells them apart; with subtle they are dimmer and smaller, among the "
                        "same structures.")
    p.add_argument("--lesion-contrast", type=float, default=None,
                   help="The peak lesion brightening in tissue-texture SDs, over the --difficulty level's (easy: "
                        "4.5-10).")
    p.add_argument("--lesion-size", type=float, default=None,
                   help="A factor on the lesion box side, over the --difficulty level's (1: 10-25%% of the frame "
                        "width).")
    p.add_argument("--lesion-count", type=int, default=None,
                   help="Lesions per positive volume, over the --difficulty level's (default: one, two in about "
                        "20%% of "
                        "volumes).")
    p.set_defaults(func=cmd_synth)


def add_demo(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow demo`` command."""
    p = sub.add_parser("demo", help="Run the whole pipeline on a small synthetic dataset, on the CPU.")
    p.add_argument("--out", type=Path, default=Path("demo-output"),
                   help="The output folder: the dataset goes to OUT/data, the pipeline's outputs to OUT/outputs "
                        "(default demo-output).")
    p.add_argument("--patients", type=int, default=100, help="The number of synthetic patients (default 100).")
    p.add_argument("--seed", type=int, default=0, help="The seed of the synthetic dataset (default 0).")
    # No --image-size: the demo preset (configs/demo.yaml) fixes the sizes its verdict is tuned
    # for (96 px PNGs, 64 px network input); 'tomoflow run --preset demo' takes other settings.
    p.set_defaults(func=cmd_demo)
