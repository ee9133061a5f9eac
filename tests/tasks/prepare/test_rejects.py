"""The reject-fraction stop message (volumes outside the data root)."""

from __future__ import annotations

from tasks.prepare.locate import outside_message
from tasks.prepare.rejects import reject_fraction_error


def test_outside_data_root_stop_names_path_root_and_both_ways_out_not_the_fraction() -> None:
    reason = outside_message("/mnt/dbt/x.dcm", "/data/bcs")
    accounting = {"listed": 10, "faults": 5, "max_reject_fraction": 0.1,
                  "rejected_by_reason": {"outside-data-root": 5}}
    message = reject_fraction_error(accounting, reasons=["not-selected", reason])
    assert message is not None
    assert "/mnt/dbt/x.dcm" in message and "/data/bcs" in message
    assert "--extra-data-root DIR" in message and "symlink" in message
    assert "accept this with" not in message  # raising the fraction would drop the volumes


def test_other_faults_still_offer_the_fraction() -> None:
    accounting = {"listed": 10, "faults": 5, "max_reject_fraction": 0.1, "rejected_by_reason": {"no-label": 5}}
    assert "--max-reject-fraction 0.51" in reject_fraction_error(accounting)
