"""The job's report: `report.json` (machine-readable), `report.md` and `plots/*.png`."""

from lancet_ds.report.quality import recall_quality
from lancet_ds.report.summary import build_report, write_report

__all__ = ["build_report", "recall_quality", "write_report"]
