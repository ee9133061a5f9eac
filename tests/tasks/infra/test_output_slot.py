"""The per-output-root slot: a stable name per resolved path; a server error while waiting is told apart."""

from __future__ import annotations

from pathlib import Path

import httpx


def test_slot_name_is_per_resolved_output_root(tmp_path: Path) -> None:
    from tasks.infra.output_slot import SLOT_PREFIX, slot_name

    (tmp_path / "a").mkdir()
    assert slot_name(tmp_path / "a") == slot_name(tmp_path / "a" / ".." / "a")
    assert slot_name(tmp_path / "a") != slot_name(tmp_path / "b")
    assert slot_name(tmp_path / "a").startswith(SLOT_PREFIX) and str(tmp_path) not in slot_name(tmp_path / "a")


def test_server_error_behind_a_failed_acquisition() -> None:
    from tasks.infra.output_slot import _server_error
    from tasks.infra.prefect_internals import slot_acquisition_error

    ConcurrencySlotAcquisitionError = slot_acquisition_error()  # noqa: N806 - a class

    request = httpx.Request("POST", "http://127.0.0.1/api")

    def failed(code: int) -> ConcurrencySlotAcquisitionError:
        try:
            try:
                raise httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))
            except httpx.HTTPStatusError as exc:
                raise ConcurrencySlotAcquisitionError("Unable to acquire concurrency slots") from exc
        except ConcurrencySlotAcquisitionError as exc:
            return exc

    assert _server_error(failed(503)) == 503
    assert _server_error(failed(404)) is None  # a missing limit is not waited out
