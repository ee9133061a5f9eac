"""Split fractions: the one check of the (train, validation, test) shares of patients."""

from __future__ import annotations

import math
from typing import Any


def check_split_fractions(value: Any) -> tuple[float, float, float]:
    """Shares of patients for (train, validation, test): three finite, non-negative numbers summing to 1.

    A zero leaves that split empty. The one check of split fractions: :class:`SlicesConfig`
    applies it (and also needs train > 0), and :func:`tasks.prepare.splits.split_patients` calls it on
    fractions given directly.

    Raises:
        ValueError: Naming the value and what is needed.
    """
    try:
        values = tuple(float(f) for f in value)
    except (TypeError, ValueError):
        raise ValueError(f"fractions {value!r} must be three numbers (train, validation, test)") from None
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values):
        raise ValueError(f"fractions {value!r} must be three non-negative numbers (train, validation, test)")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions {value!r} sum to {sum(values):g}; they must sum to 1")
    return values  # type: ignore[return-value]
