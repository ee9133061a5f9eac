"""Frame rules: which frames of a volume to extract, as a typed value.

The slice plan (:func:`tasks.prepare.slices.select_slices`) decides a rule per volume before the
volume's frame count is known (only the extractor reads the header), so a rule is a value
that is resolved later by :meth:`FrameRule.frames`, deterministically from ``(seed, volume
key)`` alone: the result does not depend on the process, the order of volumes or the
sharding. The plan stores a rule as its text (the manifest's ``frames_rule`` column), and
``str(FrameRule.parse(text)) == text`` for every rule the plan writes.

Rules (``kind`` and its text):

- ``all``: every frame.
- ``middle``: frame ``n_frames // 2``.
- ``frames:12,30``: exactly these 0-based frames (out of range is an error).
- ``lesion:2:12,30``: frames within 2 of each box slice, clipped to the volume (used when
  the boxes CSV lacks ``VolumeSlices``; a box slice out of range is an error).
- ``pick:1``: a seeded sample of exactly that many frames (``single-slice``'s normals).
- ``fraction:0.15``: a seeded sample of ``max(1, round(0.15 * n_frames))`` frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

RuleKind = Literal["all", "middle", "frames", "lesion", "pick", "fraction"]


def volume_key(patient_id: str, study_uid: str, view: str) -> str:
    """The stable text key of a volume, ``"DBT-P00013/DBT-S00163/rmlo"``: seeds derive from it."""
    return f"{patient_id}/{study_uid}/{view}"


def stable_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from ``seed`` and ``parts`` via SHA-256: the same in every process.

    Python's ``hash()`` of a string changes with ``PYTHONHASHSEED``; this does not.
    """
    text = "\x1f".join([str(int(seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


@dataclass(frozen=True)
class FrameRule:
    """One volume's frame rule (see the module docstring for the kinds).

    Attributes:
        kind: The rule's kind.
        frames: ``frames``: the frame indices; ``lesion``: the box slices, as written (the
            text keeps duplicates and order, so the plan's bytes do not change).
        window: ``lesion``: frames either side of each box slice.
        count: ``pick``: how many frames.
        fraction: ``fraction``: the share of frames, in (0, 1].
    """

    kind: RuleKind
    frames: tuple[int, ...] = ()
    window: int = 0
    count: int = 0
    fraction: float = 0.0

    @classmethod
    def all(cls) -> FrameRule:
        """Every frame."""
        return cls("all")

    @classmethod
    def exact(cls, frames: "list[int] | tuple[int, ...] | set[int]") -> FrameRule:
        """Exactly ``frames`` (sorted, distinct)."""
        return cls("frames", frames=tuple(sorted({int(f) for f in frames})))

    @classmethod
    def lesion(cls, window: int, centres: "list[int] | tuple[int, ...]") -> FrameRule:
        """Frames within ``window`` of each of ``centres`` (box slices), clipped at extraction."""
        return cls("lesion", frames=tuple(int(c) for c in centres), window=int(window))

    @classmethod
    def pick(cls, count: int) -> FrameRule:
        """``count`` seeded frames."""
        return cls("pick", count=int(count))

    @classmethod
    def share(cls, fraction: float) -> FrameRule:
        """A seeded ``fraction`` of the frames."""
        return cls("fraction", fraction=float(fraction))

    @classmethod
    def parse(cls, text: str, *, key: str | None = None) -> FrameRule:
        """The rule a text spells (the inverse of :meth:`__str__`).

        Args:
            text: A rule such as ``"frames:12,30"``.
            key: The volume's :func:`volume_key`, named in errors.

        Raises:
            ValueError: An unknown or malformed rule, naming the volume and the text.
        """
        where = f"volume {key}: " if key is not None else ""
        rule = str(text)
        name, _, argument = rule.partition(":")
        if name in ("all", "middle") and not argument:
            return cls(name)  # type: ignore[arg-type]
        if name == "frames":
            try:
                return cls("frames", frames=_ints(argument))
            except ValueError:
                raise ValueError(f"{where}rule {rule!r} must list integer frames, e.g. 'frames:12,30'") from None
        if name == "lesion":
            window_text, _, centres_text = argument.partition(":")
            try:
                return cls("lesion", frames=_ints(centres_text), window=int(window_text))
            except ValueError:
                raise ValueError(
                    f"{where}rule {rule!r} must read 'lesion:<window>:<slice>,...', e.g. 'lesion:2:12,30'"
                ) from None
        if name == "pick":
            try:
                count = int(argument)
            except ValueError:
                count = 0
            if count < 1:
                raise ValueError(f"{where}rule {rule!r} needs a positive frame count, e.g. 'pick:1'")
            return cls("pick", count=count)
        if name == "fraction":
            try:
                fraction = float(argument)
            except ValueError:
                fraction = float("nan")
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"{where}rule {rule!r} needs a fraction in (0, 1], e.g. 'fraction:0.15'")
            return cls("fraction", fraction=fraction)
        raise ValueError(
            f"{where}unknown frame rule {rule!r}; expected 'all', 'middle', 'frames:a,b,...', "
            f"'lesion:w:a,b,...', 'pick:n' or 'fraction:f'"
        )

    def __str__(self) -> str:
        if self.kind in ("all", "middle"):
            return self.kind
        if self.kind == "frames":
            return "frames:" + ",".join(str(f) for f in self.frames)
        if self.kind == "lesion":
            return f"lesion:{self.window}:" + ",".join(str(f) for f in self.frames)
        if self.kind == "pick":
            return f"pick:{self.count}"
        return f"fraction:{self.fraction!r}"

    def frames_in(self, n_frames: int, *, seed: int, key: str) -> list[int]:
        """The sorted, distinct frame indices this rule selects in a volume of ``n_frames``.

        Args:
            n_frames: The volume's frame count (from its header), positive.
            seed: The run's seed.
            key: The volume's :func:`volume_key`; seeded rules draw from ``(seed, key)``.

        Raises:
            ValueError: A frame or box slice out of range (naming the volume, the frame and
                ``n_frames``).
        """
        rule = str(self)
        if self.kind == "all":
            return list(range(n_frames))
        if self.kind == "middle":
            return [n_frames // 2]
        if self.kind == "frames":
            frames = sorted(set(self.frames))
            for frame in frames:
                if not 0 <= frame < n_frames:
                    raise ValueError(
                        f"volume {key}: frame {frame} of rule {rule!r} is out of range for a volume of "
                        f"{n_frames} frames (valid 0..{n_frames - 1}); the boxes CSV's Slice disagrees "
                        f"with the file's NumberOfFrames: reject the volume or fix the CSV"
                    )
            return frames
        if self.kind == "lesion":
            selected: set[int] = set()
            for centre in sorted(set(self.frames)):
                if not 0 <= centre < n_frames:
                    raise ValueError(
                        f"volume {key}: box Slice {centre} is out of range for a volume of {n_frames} frames "
                        f"(valid 0..{n_frames - 1}); the boxes CSV disagrees with the file: reject the volume "
                        f"or fix the CSV"
                    )
                selected.update(range(max(0, centre - self.window), min(n_frames - 1, centre + self.window) + 1))
            return sorted(selected)
        if self.kind == "pick":
            rng = np.random.default_rng(stable_seed(seed, "pick", key))
            return sorted(int(f) for f in rng.choice(n_frames, size=min(self.count, n_frames), replace=False))
        size = min(n_frames, max(1, round(self.fraction * n_frames)))
        rng = np.random.default_rng(stable_seed(seed, "fraction", key))
        return sorted(int(f) for f in rng.choice(n_frames, size=size, replace=False))


def resolve_frames(rule: "str | FrameRule", n_frames: int, *, seed: int, key: str) -> list[int]:
    """The sorted frame indices a rule selects in a volume of ``n_frames`` frames.

    Args:
        rule: A :class:`FrameRule` or its text.
        n_frames: The volume's frame count (from its header).
        seed: The run's seed.
        key: The volume's :func:`volume_key`.

    Raises:
        ValueError: Bad ``n_frames``, an unknown or malformed rule, or a frame out of range
            (the message names the volume, the frame and ``n_frames``).
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"volume {key}: n_frames must be a positive integer, got {n_frames!r}")
    parsed = rule if isinstance(rule, FrameRule) else FrameRule.parse(rule, key=key)
    return parsed.frames_in(int(n_frames), seed=seed, key=key)
