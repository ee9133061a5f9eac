"""The report's sections on transfer and generalisation, and their dashboard artifacts.

* Starting point: where the model's weights came from (ImageNet, scratch, a state_dict
  file, or an earlier tomoflow model with its run, SHA-256, training-data fingerprint and
  its own test figures).
* Training-data audit: the evaluated patients, studies and images against the model's own
  training and validation data (:mod:`models.inference.provenance`), beside the prepared splits' audit.
* External evaluation: the figures on another collection beside the model's own test
  figures, and the gap with its bootstrap interval, read beside the chance AUC of 0.5.

Only counts, digests' counts and figures are shown: never an id, a name or a header value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HEADINGS", "external_markdown", "sections", "training_audit_markdown"]

#: Sections this module adds to the report: anchor -> heading.
HEADINGS = {"starting-point": "Starting point", "external": "External evaluation"}

_NAMES = {"roc_auc": "ROC AUC", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity"}


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(pair: Any) -> str:
    return "n/a" if not pair else f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def starting_point(source: Mapping[str, Any] | None) -> dict[str, Any]:
    """Rows describing the weights the model started from."""
    if not source:
        return {"text": "Not recorded: the checkpoint predates the record of its starting weights.", "rows": []}
    kind = source.get("kind")
    if kind == "none":
        return {"text": "Trained from scratch (random initialisation).", "rows": []}
    if kind == "imagenet":
        return {"text": "Started from torchvision's ImageNet weights.", "rows": [["file", source.get("file")]]}
    if kind == "file":
        return {"text": "Started from a state_dict file.", "rows": [["file", source.get("path")],
                                                                    ["SHA-256", source.get("sha256")]]}
    rows = [["source run", source.get("run")], ["checkpoint", source.get("checkpoint")],
            ["SHA-256", source.get("sha256")], ["loaded", source.get("transfer")],
            ["source epoch", source.get("epoch")],
            ["source training data (manifest fingerprint)", source.get("training_data_fingerprint")]]
    figures = source.get("test_figures")
    if figures:
        for key, name in _NAMES.items():
            value = (figures.get("metrics") or {}).get(key)
            pair = (figures.get("intervals") or {}).get(key)
            ci = f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""
            rows.append([f"source's own {figures.get('split') or 'test'} {name}, per image", f"{_num(value)}{ci}"])
    else:
        rows.append(["source's own test figures", "not found (evaluate the source run to record them)"])
    return {"text": "Started from an earlier tomoflow model (transfer from another collection or institution).",
            "rows": rows}


def training_audit(audit: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The audit of the evaluated rows against the model's training and validation data."""
    if not audit:
        return None
    if not audit.get("checked"):
        return {"ok": None, "text": f"Not checked: {audit.get('reason')}.", "rows": []}
    rows = [[split, v.get("patients"), v.get("studies"), v.get("images")] for split, v in (audit.get("by_split") or {}).items()]
    ev = audit.get("evaluated") or {}
    rows.append(["evaluated", ev.get("patients"), ev.get("studies"), ev.get("images")])
    if not audit.get("overlap_rows"):
        compared = "; ".join(audit.get("keys_compared") or ["ids by salted hash", "images by a hash of their pixels"])
        notes = "".join(f" ({note})" for note in audit.get("notes") or ())
        text = ("None of the evaluated patients, studies or images is among those the model trained or was "
                f"validated on (compared: {compared}){notes}.")
        return {"ok": True, "text": text, "rows": rows}
    how = ("the evaluated split is the model's own training data, by request" if audit.get("by_request")
           else "evaluated with --allow-overlap")
    text = (f"{audit.get('overlap_patients_any')} evaluated patient(s), {audit.get('overlap_rows')} image(s), were "
            f"seen in training or validation ({how}): these figures are optimistic, not a measure of generalisation.")
    return {"ok": False, "text": text, "rows": rows}


def external(comparison: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Own test figures, external figures and the gap with its interval, per figure."""
    if not comparison:
        return None
    own = comparison["own_test"]["figures"]
    ext = comparison["external"]["figures"]
    gap = comparison["gap"]
    rows = [[_NAMES[k], _num(own.get(k)), _num(ext.get(k)), _num(gap["difference"].get(k)),
             _interval(gap["intervals"].get(k))] for k in _NAMES]
    auc, interval = gap["difference"].get("roc_auc"), gap["intervals"].get("roc_auc")
    single = (comparison["external"].get("not_computable") or {}).get("roc_auc")
    dist = comparison["external"].get("score_distribution") or {}
    if single:
        verdict = (f"AUC not computable: {single}. Scores on the external images: median {_num(dist.get('q50'))} "
                   f"(5-95%: {_num(dist.get('q05'))} to {_num(dist.get('q95'))}); "
                   f"{_num(dist.get('share_at_or_above_threshold'))} of them at or above the threshold.")
    elif auc is None or not interval:
        verdict = "The AUC gap could not be estimated (a class is missing from one of the sets)."
    elif interval[1] < 0:
        verdict = "The model does worse on the external collection: the AUC gap's interval lies below 0."
    elif interval[0] > 0:
        verdict = "The model does better on the external collection: the AUC gap's interval lies above 0."
    else:
        verdict = "The AUC gap's interval includes 0: no difference shown at this sample size."
    if ext.get("roc_auc") is not None and ext["roc_auc"] <= 0.5:
        verdict += " Its external AUC is at or below chance (0.5)."
    verdict += " " + _beside_trivial(comparison.get("trivial"))
    return {"source": comparison.get("source"), "own": comparison["own_test"], "ext": comparison["external"],
            "rows": rows, "verdict": verdict, "b": gap["bootstrap"]["n_resamples"]}


def _beside_trivial(trivial: Mapping[str, Any] | None) -> str:
    """The external AUC read beside the trivial brightness score on the same external images."""
    if not trivial or trivial.get("roc_auc") is None:
        return ("The trivial brightness score was not computed on the external collection (older evaluation, or "
                "no validation split with both classes to choose it on).")
    diff = trivial.get("model_minus_trivial")
    said = ("beats it" if trivial.get("beats_trivial") else "does NOT beat it") if diff is not None else "n/a"
    return (f"On the external images the trivial brightness score {trivial['score']} (chosen on the training "
            f"collection's validation split) reaches AUC {_num(trivial['roc_auc'])}; the model "
            f"{_num(trivial.get('model_roc_auc'))}, difference {'n/a' if diff is None else f'{diff:+.3f}'} "
            f"{_interval(trivial.get('difference_interval'))}: it {said}.")


def sections(generalization: Mapping[str, Any] | None) -> dict[str, Any]:
    """The template's ``generalization`` context."""
    g = generalization or {}
    return {"start": starting_point(g.get("weights_source")), "audit": training_audit(g.get("training_audit")),
            "external": external(g.get("external"))}


def training_audit_markdown(audit: Mapping[str, Any]) -> str:
    """The ``training-audit`` artifact."""
    part = training_audit(audit) or {"text": "no audit", "rows": []}
    lines = ["### Evaluated data against the model's training data", "", part["text"], "",
             "| set | patients | studies | images |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in part["rows"]]
    return "\n".join(lines) + "\n"


def external_markdown(comparison: Mapping[str, Any]) -> str:
    """The ``external-evaluation`` artifact."""
    part = external(comparison)
    assert part is not None
    lines = ["### External evaluation (per image)", "", part["verdict"], "",
             "| figure | own test | external | gap | 95% interval |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in part["rows"]]
    return "\n".join(lines) + "\n"
