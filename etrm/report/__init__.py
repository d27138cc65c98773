"""The Markdown report of an investigation or an Experiment 1 run (`markdown`: the verdict
table and the metrics log's plots) and its H7 section (`h7`).

`from etrm.report import write_report` keeps working: the writer's public names are
re-exported here."""

from etrm.report.markdown import PLOTS_MISSING, ReportError, write_report

__all__ = ["PLOTS_MISSING", "ReportError", "write_report"]
