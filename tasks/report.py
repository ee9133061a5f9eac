"""Re-export for the other lanes of issue 14 while they merge: the HTML report is :mod:`tasks.html_report`."""

from tasks.html_report import METRIC_NAMES, REPORT_NAME, SECTION_HEADINGS, metrics_table, summary_markdown, write_report  # noqa: F401  re-export
