"""The anatomy of one synthetic volume and where its lesions sit (drawn, not yet rendered).

Each volume's anatomy and lesions come from a generator of its own (``[seed, 1, index]``),
so a volume's pixels do not depend on how many volumes came before it. Box coordinates
are in the oriented frame (breast against the chest-wall edge of the view's side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the plan holds volumes; a volume's anatomy is planned here
    from synth.plan import Volume


#: Weights of the four texture octaves (coarse to fine), in units of the breast's ``amp``.
OCTAVE_WEIGHTS = (0.6, 0.45, 0.3, 0.2)
#: Standard deviation of the tissue texture per unit of ``amp`` (independent octaves).
TEXTURE_SD = float(np.sqrt(sum(w * w for w in OCTAVE_WEIGHTS)))
#: Mean of the ``easy`` peak brightening draw (grey values), used to keep its +-13% spread
#: when a contrast is asked for in texture SDs.
_EASY_AMPLITUDE = 300.0


@dataclass(frozen=True)
class LesionSettings:
    """How hard the lesions are to see: contrast, size and count (``None``: the ``easy`` draw).

    Attributes:
        contrast: Peak brightening in units of the tissue texture's standard deviation (each
            lesion varies +-13% around it); ``None``: 260-340 grey values (4.5-10 SDs).
        size: Factor on the box side (1: 10-25% of the frame's width, shrunk where it does not fit).
        count: Lesions per positive volume; ``None``: one, two for about 20% of volumes.
        mimics: Peak brightening, in texture SDs, of the bright *normal* structures drawn in
            every volume, lesion or not (:func:`plan_structures`): 2-4 ducts/vessels (thin,
            elongated, soft-edged ridges at ``mimics`` x 0.8-1.25) and 1-2 dense fibroglandular
            patches (broad, diffuse, at 0.5-0.8 of that); and lesion-bright *decoys*
            (:func:`_decoys`: the lesions' own size and brightness draws, added to the tissue as
            a lesion is, but elongated and soft-edged), one more in a volume
            without a lesion, so both classes hold as many lesion-bright spots. A brightness
            filter cannot tell them from a lesion; the lesion's compact, sharp-edged shape
            can. ``None``: none (``easy``).
    """

    contrast: float | None = None
    size: float = 1.0
    count: int | None = None
    mimics: float | None = None


#: Named difficulty levels of ``tomoflow synth --difficulty``.
#:
#: * ``easy`` draws exactly what the generator always drew (same bytes for the same seed):
#:   lesions 4.5-10 texture SDs bright on smooth texture, found by a brightness filter alone.
#: * ``moderate``: lesions 2.5 texture SDs bright (+-13%), and every volume, normal or not,
#:   also holds bright normal structures (``mimics`` 4: ducts/vessels 3.2-5 SDs at their
#:   ridge, dense patches 2-3.2 SDs) and lesion-bright decoys (one more in a normal volume).
#:   Brightness alone then separates the classes poorly: the trivial family of
#:   :mod:`tasks.evaluate.trivial_scores`, each score and so its best on the evaluated
#:   images themselves, reaches an image-level ROC AUC of 0.46-0.68 over single-slice
#:   images (one per patient) of 300-patient collections, seeds 100-114 (not tuned on) at
#:   positive fractions 0.1-0.8, at 64, 96 and 224 px, frames 128 x 96 and 256 x 196 (``tests/synth/test_difficulty.py``
#:   checks <= 0.75 over seeds 11-15). The lesion's compact, sharp-edged shape still
#:   separates them, which is what a classifier must learn. Without the decoys (a lesion
#:   added on top of everything a normal volume holds) the score reached 0.70-0.78 on 300
#:   patients and up to 0.86 on small test splits; with lesions at 2 SDs on plain texture,
#:   0.87-0.88.
#: * ``subtle``: dimmer and smaller lesions among the same normal structures (harder than
#:   ``moderate`` on every count).
DIFFICULTIES: dict[str, LesionSettings] = {
    "easy": LesionSettings(),
    "moderate": LesionSettings(contrast=2.5, mimics=4.0),
    "subtle": LesionSettings(contrast=0.9, size=0.6, mimics=4.0),
}


def lesion_settings(difficulty: str = "easy", *, contrast: float | None = None, size: float | None = None,
                    count: int | None = None) -> LesionSettings:
    """The named level with any explicit option over it.

    Raises:
        ValueError: an unknown level or an out-of-range option, naming the value and what is allowed.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty {difficulty!r}: expected one of {', '.join(DIFFICULTIES)}")
    base = DIFFICULTIES[difficulty]
    if contrast is not None and not 0.0 < contrast <= 50.0:
        raise ValueError(f"lesion contrast {contrast!r}: expected texture SDs in (0, 50], e.g. 2")
    if size is not None and not 0.2 <= size <= 1.5:
        raise ValueError(f"lesion size {size!r}: expected a factor from 0.2 to 1.5 (1 = 10-25% of the frame)")
    if count is not None and not 1 <= count <= 4:
        raise ValueError(f"lesion count {count!r}: expected 1 to 4 lesions per positive volume")
    return LesionSettings(contrast=base.contrast if contrast is None else float(contrast),
                          size=base.size if size is None else float(size),
                          count=base.count if count is None else int(count), mimics=base.mimics)


@dataclass
class Lesion:
    """One lesion: its box (oriented frame), class, and the shape of its profile."""

    slice: int
    x: int
    y: int
    width: int
    height: int
    cls: str
    ad: int
    amplitude: float
    sigma_z: float
    spiculated: bool
    lobes: int
    lobe_amp: float
    phase: float
    spicule_angles: tuple[float, ...]
    spicule_lengths: tuple[float, ...]


@dataclass
class Structure:
    """A bright normal structure (not a lesion), present on every frame of its volume.

    ``kind`` ``"duct"``: a thin ridge along a segment (Gaussian across, soft ends);
    ``"patch"``: a broad elliptical Gaussian (dense fibroglandular tissue). Frame coordinates
    (as the lesion boxes), ``half_length`` / ``half_width`` in pixels along / across ``angle``.
    """

    kind: str
    cx: float
    cy: float
    angle: float
    half_length: float
    half_width: float
    amplitude: float


@dataclass
class Breast:
    """Anatomy of one volume in the oriented frame (chest wall on the view's side)."""

    cy: float  # centre row of the half-ellipse
    ay: float  # vertical semi-axis (pixels)
    ax: float  # horizontal semi-axis, from the chest wall (pixels)
    base: float  # mean tissue value
    amp: float  # texture amplitude
    pect_w: float  # pectoral triangle width along the top edge (0 for CC)
    pect_h: float  # pectoral triangle height along the chest wall
    pect_amp: float
    noise: float

    def ellipse(self, y: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Normalised radius (1 on the skin line) at rows ``y``, ``dx`` px from the chest wall."""
        return np.sqrt(((y - self.cy) / self.ay) ** 2 + (dx / self.ax) ** 2)

    def in_pectoral(self, y: float, dx: float) -> bool:
        return self.pect_w > 0 and dx / self.pect_w + y / self.pect_h < 1.0


def round_half_up(x: float) -> int:
    """Round .5 up (numpy's ``round`` rounds half to even, which would change the counts)."""
    return int(np.floor(x + 0.5))


def _place_box(
    rng: np.random.Generator,
    breast: Breast,
    rows: int,
    cols: int,
    side: str,
    taken: list[tuple[int, int, int, int]],
    size: float = 1.0,
) -> tuple[int, int, int, int] | None:
    """A box (x, y, w, h) inside the breast, off the pectoral muscle, clear of ``taken``."""
    # The draw is the same whatever ``size`` is, so ``easy`` (size 1) keeps its bytes.
    frac = float(rng.uniform(0.10, 0.25)) * size
    aspect = float(rng.uniform(0.8, 1.25))
    for _shrink in range(6):
        w = max(4, round_half_up(frac * cols))
        h = max(4, min(round_half_up(w * aspect), round_half_up(0.3 * rows)))
        for _try in range(200):
            x = int(rng.integers(0, cols - w + 1))
            y = int(rng.integers(0, rows - h + 1))
            xs = np.array([x, x + w - 1, x, x + w - 1], dtype=np.float64)
            ys = np.array([y, y, y + h - 1, y + h - 1], dtype=np.float64)
            dx = (cols - 1 - xs) if side == "R" else xs
            if np.any(breast.ellipse(ys, dx) > 0.85):
                continue
            # The box point nearest the pectoral triangle is its top corner at the chest wall.
            near_dx = float(dx.min())
            if breast.in_pectoral(float(y), near_dx):
                continue
            if any(
                x < tx + tw + 2 and tx < x + w + 2 and y < ty + th + 2 and ty < y + h + 2
                for tx, ty, tw, th in taken
            ):
                continue
            return x, y, w, h
        frac *= 0.8
    return None


def plan_image(
    vol: Volume, rows: int, cols: int, seed: int, lesion_classes: list[tuple[str, int]],
    settings: LesionSettings = LesionSettings(),
) -> None:
    """Draw the volume's anatomy and place its lesions (box coordinates are oriented)."""
    rng = np.random.default_rng([seed, 1, vol.index])
    mlo = vol.view.endswith("mlo")
    breast = Breast(
        cy=rows * (0.5 + float(rng.uniform(-0.04, 0.04))),
        ay=rows * float(rng.uniform(0.38, 0.47)),
        ax=cols * float(rng.uniform(0.62, 0.85)),
        base=float(rng.uniform(240, 360)),
        amp=float(rng.uniform(40, 70)),
        pect_w=cols * float(rng.uniform(0.18, 0.3)) if mlo else 0.0,
        pect_h=rows * float(rng.uniform(0.3, 0.45)) if mlo else 1.0,
        pect_amp=float(rng.uniform(50, 90)) if mlo else 0.0,
        noise=float(rng.uniform(1.5, 3.0)),
    )
    vol.breast = breast
    taken: list[tuple[int, int, int, int]] = []
    n = vol.n_frames
    for cls, ad in lesion_classes:
        box = _place_box(rng, breast, rows, cols, vol.side, taken, settings.size)
        if box is None:  # pragma: no cover - the breast always has room for a 10% box
            raise RuntimeError(f"{vol.key}: could not place a lesion box in a {rows}x{cols} frame")
        taken.append(box)
        spiculated = bool(ad) or bool(rng.random() < (0.5 if cls == "cancer" else 0.1))
        k = int(rng.integers(6, 13))
        # Drawn in the order the generator always drew them (slice, then amplitude): same bytes at easy.
        lesion_slice = int(rng.integers(n // 4, n - n // 4)) if n > 1 else 0
        amplitude = float(rng.uniform(260, 340)) * (0.9 if ad else 1.0)
        if settings.contrast is not None:  # in texture SDs of this breast, keeping the draw's spread
            amplitude = settings.contrast * breast.amp * TEXTURE_SD * amplitude / _EASY_AMPLITUDE
        vol.lesions.append(
            Lesion(
                slice=lesion_slice,
                x=box[0], y=box[1], width=box[2], height=box[3], cls=cls, ad=int(ad),
                amplitude=amplitude,
                sigma_z=float(rng.uniform(0.9, 1.3)),
                spiculated=spiculated,
                lobes=int(rng.integers(3, 7)),
                lobe_amp=float(rng.uniform(0.05, 0.1)) if cls == "cancer" else 0.02,
                phase=float(rng.uniform(0, 2 * np.pi)),
                spicule_angles=tuple(float(a) for a in rng.uniform(-np.pi, np.pi, k)),
                spicule_lengths=tuple(float(s) for s in rng.uniform(0.9, 1.0, k)),
            )
        )


def plan_structures(vol: Volume, rows: int, cols: int, seed: int, settings: LesionSettings) -> None:
    """Draw the volume's bright normal structures (``vol.structures``), ``mimics`` texture SDs bright.

    They come from a generator of their own (``[seed, 4, index]``), so the anatomy and lesion
    draws are untouched. Ducts run roughly from the chest wall towards the nipple (within 45
    degrees of it), 25-50% of the frame's width long and 1.2-2% of its short side wide
    (Gaussian half-width); patches span 20-35% of the width, about twice as long as wide.
    """
    breast = vol.breast
    assert breast is not None
    rng = np.random.default_rng([seed, 4, vol.index])
    mimics = float(settings.mimics or 0.0)
    unit = breast.amp * TEXTURE_SD
    short = min(rows, cols)

    def centre() -> tuple[float, float]:
        for _ in range(200):
            x, y = float(rng.uniform(0, cols - 1)), float(rng.uniform(0, rows - 1))
            dx = (cols - 1 - x) if vol.side == "R" else x
            if breast.ellipse(np.array([y]), np.array([dx]))[0] < 0.7:
                return x, y
        return (cols - 1) * (0.7 if vol.side == "R" else 0.3), breast.cy  # pragma: no cover

    out: list[Structure] = []
    for _ in range(int(rng.integers(2, 5))):
        x, y = centre()
        angle = float(rng.uniform(-np.pi / 4, np.pi / 4))
        out.append(Structure("duct", x, y, angle, 0.5 * cols * float(rng.uniform(0.25, 0.5)),
                             short * float(rng.uniform(0.012, 0.02)),
                             mimics * unit * float(rng.uniform(0.8, 1.25))))
    for _ in range(int(rng.integers(1, 3))):
        x, y = centre()
        length = 0.5 * cols * float(rng.uniform(0.2, 0.35))
        out.append(Structure("patch", x, y, float(rng.uniform(-np.pi, np.pi)), length,
                             length * float(rng.uniform(0.4, 0.6)),
                             mimics * unit * float(rng.uniform(0.5, 0.8))))
    out += _decoys(rng, vol, rows, cols, settings, unit)
    vol.structures = out


#: Elongation (long / short axis) of a decoy: not the lesion's round, compact outline.
DECOY_ELONGATION = (1.5, 2.5)


def _decoys(rng: np.random.Generator, vol: Volume, rows: int, cols: int, settings: LesionSettings,
            unit: float) -> list[Structure]:
    """Lesion-bright decoys: as bright and as large as the level's lesions, elongated and soft-edged.

    Without them a positive image holds everything a normal one does *plus* a lesion added
    on top, so its brightest spot is brighter whenever the lesion outshines or sits on a
    normal structure (the brightest-spot score then reached ROC AUC 0.70-0.78 at ``moderate``,
    and above 0.8 on small test splits). A decoy is placed like a lesion (:func:`_place_box`,
    clear of the volume's lesion boxes and of other decoys) with the lesions' size and
    brightness draws, and *added* to the tissue as a lesion is. Every volume gets 0-1 of them,
    and a volume without a lesion one more: the count of lesion-bright spots is then the same
    in both classes, so brightness alone says little; the decoy's shape (1.5-2.5 times longer
    than wide, a Gaussian profile instead of a plateau with a sharp rim, no lobes or
    spicules: :func:`synth.render._decoy_profile`) tells it from a lesion.
    """
    breast = vol.breast
    assert breast is not None
    contrast = settings.contrast if settings.contrast is not None else 2.5
    taken = [(les.x, les.y, les.width, les.height) for les in vol.lesions]
    out: list[Structure] = []
    for _ in range(int(rng.integers(0, 2)) + (0 if vol.lesions else 1)):
        box = _place_box(rng, breast, rows, cols, vol.side, taken, settings.size)
        if box is None:  # pragma: no cover - the breast always has room for a 10% box
            continue
        taken.append(box)
        x, y, w, h = box
        radius = 0.9 * float(np.sqrt(w * h)) / 2  # the lesion mass's radius (0.9 of the half box)
        elongation = float(rng.uniform(*DECOY_ELONGATION))
        amplitude = contrast * unit * float(rng.uniform(260, 340)) / _EASY_AMPLITUDE  # the lesions' draw
        out.append(Structure("decoy", x + (w - 1) / 2, y + (h - 1) / 2, float(rng.uniform(-np.pi, np.pi)),
                             radius * float(np.sqrt(elongation)), radius / float(np.sqrt(elongation)), amplitude))
    return out
