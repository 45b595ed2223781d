"""Conformance reports: JSON with a versioned schema, JUnit XML, a self-contained HTML page,
and the matrix that merges reports from many machines.

JSON schema ``backplane-conformance/1``::

    {"schema": "backplane-conformance/1",
     "backend": {"name", "version", "distribution", "distribution_version", "api_version"},
     "device": {"id", "name", "kind", "hwdb": entry id or null, "fingerprint"},
     "versions": {runtime and driver versions by name},
     "host": {"hostname", "platform", "python", "cpu"},
     "seed", "tier", "pattern", "started", "seconds",
     "summary": {status: count}, "mandatory_passed": bool,
     "coverage": {"core_ops": 49, "declared": [op], "passed": [op]},
     "special_values": {op: [what differs, in words]},
     "cases": [{"id", "op", "dtype", "tier", "tags", "status", "seconds", "max_abs_error",
                "max_rel_error", "rtol", "atol", "oracle_mode", "error", "reason",
                "tolerance_reason" (why rtol/atol differ from the dtype default, or null),
                "deviations" (status special-values: what differs, in words; else null)}]}

``special_values`` gathers the ``deviations`` of the cases with the verdict
``special-values`` (right on ordinary values, different from the oracle on NaN, infinities
or the sign of zero); a report written before the verdict existed has none.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from backplane.conformance import field_of
from backplane.conformance.specials import summarize
from backplane.sdk.errors import ConformanceError

SCHEMA = "backplane-conformance/1"


@dataclass
class Report:
    """One conformance run of one backend on one device."""

    backend: dict[str, Any]
    device: dict[str, Any]
    versions: dict[str, str]
    host: dict[str, str]
    seed: int
    tier: str
    pattern: str | None
    started: str
    seconds: float
    cases: list[Any] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, int]:
        """How many cases ended in each status."""
        return dict(sorted(Counter(field_of(c, "status") for c in self.cases).items()))

    @property
    def mandatory_passed(self) -> bool:
        """Whether every case of the api and mandatory tiers passed (or is a known failure)."""
        # on use only: the suite's modules load when a run asks for them
        from backplane.conformance.runner import PASSING

        return all(field_of(c, "status") in PASSING for c in self.cases
                   if field_of(c, "tier") in ("api", "mandatory"))

    def coverage(self) -> dict[str, Any]:
        """Which of the core ops the backend declared (some case of the op was admitted by
        its capabilities) and which of those passed every declared case."""
        # on use only: the suite's modules load when a run asks for them
        from backplane.conformance.cases import MANDATORY_OPS
        from backplane.conformance.runner import DECLARED, PASSING

        declared: dict[str, bool] = {}
        for c in self.cases:
            op, status = field_of(c, "op"), field_of(c, "status")
            if op in MANDATORY_OPS and status in DECLARED:
                declared[op] = declared.get(op, True) and status in PASSING
        return {"core_ops": len(MANDATORY_OPS), "declared": sorted(declared),
                "passed": sorted(op for op, ok in declared.items() if ok)}

    def special_values(self) -> dict[str, list[str]]:
        """Per op, how the backend differs from the oracle on special values (the cases
        with the verdict ``special-values``), each difference once."""
        return summarize(self.cases)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the versioned schema."""
        return {"schema": SCHEMA, "backend": self.backend, "device": self.device,
                "versions": self.versions, "host": self.host, "seed": self.seed,
                "tier": self.tier, "pattern": self.pattern, "started": self.started,
                "seconds": round(self.seconds, 3), "summary": self.summary,
                "mandatory_passed": self.mandatory_passed, "coverage": self.coverage(),
                "special_values": self.special_values(),
                "cases": [c if isinstance(c, dict) else dataclasses.asdict(c)
                          for c in self.cases]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "report") -> "Report":
        """Read a report back; ConformanceError if it is not one of this schema."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ConformanceError(f"{where} is not a backplane conformance report of schema "
                                   f"{SCHEMA} (found {data.get('schema') if isinstance(data, dict) else type(data).__name__!r})")
        keys = ("backend", "device", "versions", "host", "seed", "tier", "pattern", "started",
                "seconds")
        return cls(**{k: data.get(k) for k in keys}, cases=list(data.get("cases", [])))

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write report.json, junit.xml and report.html into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / "report.json", "junit": folder / "junit.xml",
                 "html": folder / "report.html"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, default=json_default))
        paths["junit"].write_text(junit(self))
        paths["html"].write_text(render_html(self))
        return paths


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default``: a value JSON has no type for (a numpy number) as a float."""
    return float(value)


def load(path: str | Path) -> Report:
    """A report from its JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConformanceError(f"cannot read conformance report '{path}': {exc}") from None
    return Report.from_dict(data, str(path))


#: What a case's verdict is made of: compared by :func:`diff`. Timings, and texts that quote
#: measurements (``reason``, ``error``), are listed apart and do not make reports differ.
VERDICT_FIELDS = ("op", "dtype", "tier", "status", "max_abs_error", "max_rel_error", "rtol",
                  "atol", "oracle_mode")
TIMING_FIELDS = ("seconds",)


def diff(before: Report, after: Report) -> dict[str, Any]:
    """How two reports of the same cases differ, case by case (a refactoring's check that
    nothing changed, or a driver upgrade's check of what did).

    Returns ``{"same": bool, "cases": [N before, N after], "only_before": [id],
    "only_after": [id], "verdicts": [{"id", "field", "before", "after"}], "texts": [...]}``:
    ``same`` is true when both hold the same case ids and every case the same
    :data:`VERDICT_FIELDS` (NaN equal to NaN); ``texts`` lists the other fields that
    differ (never timings).
    """
    def equal(a: Any, b: Any) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)

    old = {field_of(c, "id"): c for c in before.cases}
    new = {field_of(c, "id"): c for c in after.cases}
    verdicts, texts = [], []
    for case_id in [i for i in old if i in new]:
        a, b = old[case_id], new[case_id]
        fields = {*(a if isinstance(a, dict) else vars(a)),
                  *(b if isinstance(b, dict) else vars(b))}
        for name in VERDICT_FIELDS + tuple(sorted(fields - set(VERDICT_FIELDS)
                                                  - set(TIMING_FIELDS) - {"id"})):
            x, y = field_of(a, name), field_of(b, name)
            if not equal(x, y):
                (verdicts if name in VERDICT_FIELDS else texts).append(
                    {"id": case_id, "field": name, "before": x, "after": y})
    only_before = [i for i in old if i not in new]
    only_after = [i for i in new if i not in old]
    return {"same": not (verdicts or only_before or only_after),
            "cases": [len(old), len(new)], "only_before": only_before,
            "only_after": only_after, "verdicts": verdicts, "texts": texts}


def junit(report: Report) -> str:
    """JUnit XML: one testsuite, one testcase per case; known failures and cases of ops the
    backend does not declare (``unsupported``) are skipped, as the verdict counts them."""
    suite = ET.Element("testsuite", name=f"backplane-conformance.{report.backend['name']}",
                       tests=str(len(report.cases)), time=f"{report.seconds:.3f}")
    counts = Counter()
    for c in report.cases:
        status = field_of(c, "status")
        case = ET.SubElement(suite, "testcase", classname=f"{report.backend['name']}."
                             f"{field_of(c, 'op')}", name=field_of(c, "id"),
                             time=f"{field_of(c, 'seconds') or 0:.4f}")
        if status == "fail":
            ET.SubElement(case, "failure", message=status).text = field_of(c, "error") or ""
            counts["failures"] += 1
        elif status in ("error", "crash", "hang", "invalid"):
            ET.SubElement(case, "error", message=status).text = field_of(c, "error") or ""
            counts["errors"] += 1
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=field_of(c, "reason") or "known failure")
            counts["skipped"] += 1
        elif status == "unsupported":
            ET.SubElement(case, "skipped", message="unsupported: the backend does not "
                                                   "declare this case's op or type")
            counts["skipped"] += 1
        elif status == "special-values":  # passed; what differs goes with it
            ET.SubElement(case, "system-out").text = "special values: " + "; ".join(
                field_of(c, "deviations") or [])
    for k in ("failures", "errors", "skipped"):
        suite.set(k, str(counts[k]))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.pass,.undeclared-pass,.xpass{background:#d9f2d9}.fail,.error,.crash,.hang,.unsupported{background:#f7d4d4}
.skipped{background:#eee}.invalid,.special-values{background:#fbe6b8}code{font-size:12px}
#filter{margin:.5em 0;padding:3px;width:20em}"""

_FILTER = """<script>
document.getElementById('filter').addEventListener('input', function(e){
 var q=e.target.value.toLowerCase();
 document.querySelectorAll('#cases tbody tr').forEach(function(r){
  r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';});
});</script>"""


def render_html(report: Report) -> str:
    """A self-contained page: verdict, summary, and every case (with a filter box)."""
    e = html.escape
    verdict = "PASSED" if report.mandatory_passed else "FAILED"
    summary = "".join(f"<tr class='{e(k)}'><td>{e(k)}</td><td>{v}</td></tr>"
                      for k, v in report.summary.items())
    rows = []
    for c in report.cases:
        err = (field_of(c, "error") or field_of(c, "reason")
               or "; ".join(field_of(c, "deviations") or []))
        rel, ab = field_of(c, "max_rel_error"), field_of(c, "max_abs_error")
        rows.append(f"<tr class='{e(field_of(c, 'status'))}'>"
                    f"<td><code>{e(field_of(c, 'id'))}</code></td>"
                    f"<td>{e(field_of(c, 'op'))}</td><td>{e(field_of(c, 'dtype'))}</td>"
                    f"<td>{e(field_of(c, 'tier'))}</td><td>{e(field_of(c, 'status'))}</td>"
                    f"<td>{'' if ab is None else f'{ab:.2e}'}</td>"
                    f"<td>{'' if rel is None else f'{rel:.2e}'}</td>"
                    f"<td>{e(err.splitlines()[0] if err else '')}</td></tr>")
    b, d = report.backend, report.device
    cov = report.coverage()
    differ = report.special_values()
    special = "".join(f"<tr><td>{e(op)}</td><td>{'<br>'.join(e(t) for t in texts)}</td></tr>"
                      for op, texts in differ.items())
    special = (f"<h2>Special values</h2><p>Right on ordinary values, different from the oracle "
               f"on these (verdict special-values, counted as passed):</p><table id=\"special-"
               f"values\"><tr><th>op</th><th>what differs</th></tr>{special}</table>"
               if differ else "")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>backplane conformance: {e(b['name'])} on {e(d['id'])}</title><style>{_STYLE}</style></head>
<body><h1 id="verdict">{verdict}: {e(b['name'])} {e(str(b.get('version') or ''))} on {e(d['id'])}</h1>
<p>device <b>{e(str(d.get('name')))}</b>, hwdb entry {e(str(d.get('hwdb')))}; tier {e(report.tier)};
seed {report.seed}; {len(report.cases)} cases in {report.seconds:.1f} s; host {e(report.host.get('hostname', ''))}
({e(report.host.get('platform', ''))}); started {e(report.started)}</p>
<p id="coverage">core ops declared: {len(cov['declared'])} of {cov['core_ops']}; passed: {len(cov['passed'])}</p>
<table id="summary"><tr><th>status</th><th>cases</th></tr>{summary}</table>
{special}
<p><input id="filter" placeholder="filter cases"></p>
<table id="cases"><thead><tr><th>case</th><th>op</th><th>dtype</th><th>tier</th><th>status</th>
<th>max abs error</th><th>max rel error</th><th>error or reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
{_FILTER}</body></html>"""


def matrix(reports: list[Report]) -> dict[str, Any]:
    """Merge reports: columns are backend x device, rows op x dtype, cells the worst status."""
    order = ["crash", "hang", "error", "fail", "unsupported", "invalid", "special-values",
             "skipped", "xpass", "undeclared-pass", "pass"]
    columns = []
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in reports:
        col = f"{r.backend['name']} {r.backend.get('version') or ''} @ {r.device.get('name')} " \
              f"({r.host.get('hostname', '?')})"
        if col not in columns:
            columns.append(col)
        for c in r.cases:
            row = cells.setdefault((field_of(c, "op"), field_of(c, "dtype")), {})
            status = field_of(c, "status")
            old = row.get(col)
            if old is None or order.index(status) < order.index(old):
                row[col] = status
    rows = [{"op": op, "dtype": dt, "cells": cells[(op, dt)]} for op, dt in sorted(cells)]
    return {"columns": columns, "rows": rows}


def render_matrix_html(m: dict[str, Any]) -> str:
    """The merged matrix as one self-contained page."""
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in m["columns"])
    body = "".join(
        f"<tr><td>{e(r['op'])}</td><td>{e(r['dtype'])}</td>"
        + "".join(f"<td class='{e(r['cells'].get(c, 'none'))}'>{e(r['cells'].get(c, '-'))}</td>"
                  for c in m["columns"]) + "</tr>" for r in m["rows"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>backplane conformance matrix</title>
<style>{_STYLE}</style></head><body><h1>conformance matrix: {len(m['columns'])} backend x device
columns, {len(m['rows'])} op x dtype rows</h1><p><input id="filter" placeholder="filter rows"></p>
<table id="cases"><thead><tr><th>op</th><th>dtype</th>{head}</tr></thead><tbody>{body}</tbody></table>
{_FILTER}</body></html>"""
