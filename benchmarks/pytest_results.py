"""A pytest plugin that writes each test's result to JSON (``-p benchmarks.pytest_results``, the file named by
``CLAMP_PYTEST_RESULTS``): node id, outcome (passed, failed, error, skipped), seconds, the skip reason or the
failure's last lines, and the figures the test recorded with ``record_property``. Read by ``benchmarks.check_gpu``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "CLAMP_PYTEST_RESULTS"
_results: dict[str, dict[str, Any]] = {}


def _entry(nodeid: str) -> dict[str, Any]:
    return _results.setdefault(nodeid, {"nodeid": nodeid, "outcome": "passed", "seconds": 0.0, "detail": "",
                                        "properties": {}})


def pytest_runtest_logreport(report) -> None:
    entry = _entry(report.nodeid)
    entry["seconds"] += report.duration
    entry["properties"].update({k: v for k, v in report.user_properties})
    if report.skipped:
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["detail"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["detail"] = str(report.longrepr)[-2000:]


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get(ENV)
    if path:
        Path(path).write_text(json.dumps({"exitstatus": int(exitstatus), "tests": list(_results.values())},
                                         indent=1, default=str) + "\n")
