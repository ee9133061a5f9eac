"""First contact: a flow command on a fresh PREFECT_HOME, and small datasets.

The fresh-home tests run ``tomoflow`` in a subprocess with no test harness: no
``PREFECT_API_URL`` and no start-up timeout inherited, a new empty ``PREFECT_HOME``, so the
command starts (and on first start migrates) Prefect's temporary server itself, as a new
user's first ``make demo`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import tasks.prepare.splits as splits_mod
from flows.prefect_env import EPHEMERAL_STARTUP_TIMEOUT_S, STARTUP_TIMEOUT_VARIABLE
from tasks.core.config import DataConfig, PrepareConfig, SlicesConfig
from synth.generate import generate_dataset

ROOT = Path(__file__).resolve().parents[2]


def _fresh_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Prefect setting, on a new PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p), **extra)
    return env


@pytest.fixture(scope="module")
def twelve_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tomoflow synth DATA --patients 12 --seed 1``, with small frames: 2 cancer, 2 benign."""
    root = tmp_path_factory.mktemp("twelve")
    # 4 of 12 positive (the default share would give 5): the fewest for three splits.
    summary = generate_dataset(root, patients=12, seed=1, rows=64, columns=48, frames=(4, 6), positive_fraction=1 / 3,
                               reports=False)
    assert summary["cohort_patients"] == {"normal": 7, "actionable": 1, "benign": 2, "cancer": 2}
    return root


def test_prepare_completes_on_a_fresh_prefect_home(twelve_patients: Path, tmp_path: Path) -> None:
    home, out = tmp_path / "prefect-home", tmp_path / "prepared"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "prepare", "--data-root", str(twelve_patients), "--out", str(out),
         "--strategy", "single-slice", "--image-size", "32", "--executor", "serial"],
        cwd=tmp_path, env=_fresh_env(home), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Starting temporary server" in done.stderr  # no server was inherited
    assert any(home.glob("*.db")), sorted(p.name for p in home.iterdir())  # its database, made here
    manifest = pd.read_parquet(out / "manifest.parquet")
    # 4 tumour patients for three splits: every split holds both classes (the old split left
    # validation with normal patients only, and training failed after the extraction).
    assert manifest.groupby("split")["label"].nunique().to_dict() == {"train": 2, "validation": 2, "test": 2}


_SHOW_TIMEOUT = (
    "from flows.prefect_env import apply_prefect_defaults\n"
    "print(apply_prefect_defaults())\n"
    "from prefect.settings import get_current_settings\n"
    "print(get_current_settings().server.ephemeral.startup_timeout_seconds)\n"
)


def _timeout_seen(tmp_path: Path, *, profile: str | None = None, **env: str) -> list[str]:
    home = tmp_path / f"home-{len(list(tmp_path.iterdir()))}"
    home.mkdir()
    if profile:
        (home / "profiles.toml").write_text(f'active = "mine"\n\n[profiles.mine]\n{profile}\n')
    done = subprocess.run([sys.executable, "-c", _SHOW_TIMEOUT], cwd=tmp_path, env=_fresh_env(home, **env),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_startup_timeout_is_raised_unless_the_user_set_one(tmp_path: Path) -> None:
    raised = str(EPHEMERAL_STARTUP_TIMEOUT_S)
    assert EPHEMERAL_STARTUP_TIMEOUT_S > 20  # Prefect's default, too short for a first start here
    assert _timeout_seen(tmp_path) == [raised, raised]
    assert _timeout_seen(tmp_path, **{STARTUP_TIMEOUT_VARIABLE: "33"}) == ["None", "33"]
    assert _timeout_seen(tmp_path, profile=f'{STARTUP_TIMEOUT_VARIABLE} = "44"') == ["None", "44"]
    # A server of the user's own: nothing is started, nothing is changed.
    assert _timeout_seen(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api") == ["None", "20"]


def test_too_few_tumour_patients_stop_before_extraction_once(prefect_harness, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    # One tumour patient cannot reach train, validation and test.
    generate_dataset(data, patients=12, seed=1, rows=48, columns=40, frames=(3, 4), positive_fraction=0.1,
                     reports=False)
    calls: list[int] = []
    check = splits_mod.check_split_classes

    def counted(*args, **kwargs):
        calls.append(1)
        return check(*args, **kwargs)

    monkeypatch.setattr(splits_mod, "check_split_classes", counted)
    from flows.prepare import prepare_data

    out = tmp_path / "out"
    config = PrepareConfig(data=DataConfig(data_root=str(data), output_dir=str(out)),
                           slices=SlicesConfig(strategy="single-slice", image_size=32, executor="serial"))
    with pytest.raises(ValueError) as err:
        prepare_data(config=config)
    assert isinstance(err.value, splits_mod.SplitClassError)
    assert calls == [1]  # raised once: bad input is not retried
    text = str(err.value)
    assert "validation has no tumour" in text and "test has no tumour" in text
    assert "train: 1 tumour volumes (1 patients)" in text  # single-slice: one image per patient
    assert "1 patients with a tumour" in text and "split_fractions" in text
    assert not list(out.rglob("*.png")) and not (out / "manifest.parquet").exists()
