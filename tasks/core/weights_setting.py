"""What ``--weights`` / ``model.weights`` means, decided in one place.

:meth:`WeightsSetting.verify` (the validator of :attr:`tasks.core.config.ModelConfig.weights`, in
the spirit of torchvision's ``WeightsEnum.verify``) turns the text into a typed value of one of
four kinds; everyone else reads :attr:`WeightsSetting.kind` instead of comparing strings:

* ``imagenet``: the ImageNet-1K weights from torchvision's local cache (:mod:`models.weights.resolve`);
* ``none``: random initialisation, training from scratch;
* ``run``: an earlier tomoflow model: a run folder (``tomoflow train --out RUN``), or a
  checkpoint file in one (``best.pt``, ``last.pt``, or any file with the run's ``config.json``
  beside it), copied in by :mod:`models.weights.transfer`;
* ``file``: any other path: a ``state_dict`` file (which need not exist yet: loading it says so).

One spelling each: ``imagenet`` and ``none``, in lower case. ``scratch``, ``None``,
``ImageNet`` or a keyword with spaces around it is refused with a message naming the
value and the choices, never taken for a path. ``run`` and ``file`` are told apart by
looking at the disk when the setting is read. The value *is* the text as given (a ``str``),
so the configuration serialises, and cache keys hash, exactly the text the user wrote.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from tasks.core.run_folder import BEST_NAME, CONFIG_NAME, LAST_NAME, chosen_checkpoint

__all__ = ["WEIGHTS_CHOICES", "WeightsKind", "WeightsSetting"]

WeightsKind = Literal["imagenet", "none", "file", "run"]
_KEYWORDS: tuple[WeightsKind, ...] = ("imagenet", "none")

#: The choices, as every message about a bad weights setting names them.
WEIGHTS_CHOICES = ("imagenet, none (from scratch), a tomoflow run folder (tomoflow train --out RUN) or its "
                   "best.pt, or the path of a state_dict file")


class WeightsSetting(str):
    """A weights setting: the text as given, with its :attr:`kind` and (for a path) its :attr:`path`.

    Build one with :meth:`verify`; it compares, hashes and serialises as its text.
    """

    kind: WeightsKind
    path: Path | None

    def __new__(cls, text: str, kind: WeightsKind, path: Path | None = None) -> WeightsSetting:
        if kind not in get_args(WeightsKind):
            raise ValueError(f"weights kind {kind!r} is not one of {list(get_args(WeightsKind))}")
        self = super().__new__(cls, text)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "path", path)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a WeightsSetting is immutable (tried to set {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.kind, self.path))

    def __repr__(self) -> str:
        return f"WeightsSetting({str(self)!r}, kind={self.kind!r})"

    @classmethod
    def verify(cls, value: object) -> WeightsSetting:
        """The typed value of a weights setting: the one parser of ``--weights`` / ``model.weights``.

        Args:
            value: A :class:`WeightsSetting` (returned as it is), ``None`` (``none``, as torchvision's
                ``weights=None``), ``"imagenet"``, ``"none"``, or a path (``str`` or ``os.PathLike``).

        Raises:
            ValueError: A value that is neither keyword nor a usable path (``scratch``, ``None``,
                ``ImageNet``, an empty string, a number); the message names it and the choices.
        """
        if isinstance(value, WeightsSetting):
            return value
        if value is None:
            return cls("none", "none")
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"weights {value!r} is a {type(value).__name__}, not a setting; choices: {WEIGHTS_CHOICES}")
        if value in _KEYWORDS:
            return cls(value, value)  # type: ignore[arg-type]
        folded = value.strip().lower()
        if not folded:
            raise ValueError(f"weights {value!r} is empty; choices: {WEIGHTS_CHOICES}")
        if folded == "scratch":
            raise ValueError(f"weights {value!r} is not a choice: pass none to train from scratch; "
                             f"choices: {WEIGHTS_CHOICES}")
        if folded in _KEYWORDS:
            raise ValueError(f"weights {value!r} is not a choice: write {folded} (lower case, no spaces); "
                             f"choices: {WEIGHTS_CHOICES}")
        path = Path(value).expanduser()
        return cls(value, "run" if _is_run(path) else "file", path)

    def checkpoint(self) -> Path | None:
        """The tomoflow checkpoint a ``run`` setting starts from (a folder's ``best.pt``, else ``last.pt``).

        Returns:
            The checkpoint file, or ``None`` for the other kinds.

        Raises:
            FileNotFoundError: A run folder holding neither ``best.pt`` nor ``last.pt``.
        """
        if self.kind != "run" or self.path is None:
            return None
        if not self.path.is_dir():
            return self.path
        chosen = chosen_checkpoint(self.path)
        if chosen.is_file():
            return chosen
        raise FileNotFoundError(
            f"weights folder '{self.path}' holds neither {BEST_NAME} nor {LAST_NAME}; --weights takes {WEIGHTS_CHOICES}"
        )

    def source_run(self) -> Path | None:
        """The run folder a ``run`` setting reads (the folder, or the folder holding the checkpoint), else ``None``."""
        if self.kind != "run" or self.path is None:
            return None
        return self.path if self.path.is_dir() else self.path.parent

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # A string in the schema and in every dump (config.json, cache keys), typed once validated.
        return core_schema.no_info_after_validator_function(
            cls.verify, core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=core_schema.str_schema()),
        )


def _is_run(path: Path) -> bool:
    """Whether ``path`` is a tomoflow run folder or a checkpoint file of one (read from the disk)."""
    if path.is_dir():
        return True
    return path.is_file() and (path.name in (BEST_NAME, LAST_NAME) or (path.parent / CONFIG_NAME).is_file())
