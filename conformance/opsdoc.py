"""docs/ops.md: every op of the registry against every built-in backend, generated.

Each cell says which versions of the op the backend declares (its capabilities, read on
this machine: derived from the runtimes where a backend derives them) and, where a stored
conformance result covers the op, how its cases went there. The stored results are
``docs/data/conformance-results.json``: per backend, the per-op status counts of a
conformance report, with the report's device, versions and seed; new reports are merged in
by ``backplane conformance ops --report REPORT.json``. A test regenerates the page and
compares it with the checked-in one wherever the installed runtimes are the recorded ones.

    backplane conformance ops [--report REPORT.json ...] [--results FILE] [-o docs/ops.md]
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from backplane import __version__
from backplane.conformance.specials import summarize, union
from backplane.engine.registry import registry
from backplane.ops import all_ops
from backplane.sdk.cache import write_shipped

#: The backends the page has a column for: the built-in ones, in priority order.
BUILTIN = ("reference", "openvino-cpu", "onnxruntime", "opencl", "torch-cpu", "arm-neon",
           "cuda-tensorrt", "rocm", "npu")
#: The runtimes whose versions decide the derived capabilities, recorded in the page.
RUNTIMES = ("onnx", "onnxruntime", "openvino", "torch", "pyopencl")
#: Cell marks: declared and passed, declared with failures, and not declared; passed but
#: different from the oracle on special values (NaN, infinities, the sign of zero).
PASSED, FAILED, ABSENT, SPECIAL = "✓", "✗", "·", "⚑"
#: Statuses counted as passed on the page.
_PASSED = ("pass", "known-failure", "special-values")


def versions_text(declared: Iterable[int] | None, recorded: tuple[int, ...]) -> str:
    """``all``; ``13+`` (13 and every later recorded version); or a list (``7, 13+``)."""
    if declared is None:
        return "all"
    declared = set(declared)
    have = [v for v in recorded if v in declared]
    if not have:
        return ""
    if len(have) == len(recorded):
        return "all"
    k = len(recorded)
    while k > 0 and recorded[k - 1] in declared:
        k -= 1
    suffix = list(recorded[k:])
    return ", ".join([str(v) for v in have if v not in suffix]
                     + ([f"{suffix[0]}+"] if suffix else []))


def results_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a conformance report the page keeps: per op, status counts, and how the
    backend differs from the oracle on special values."""
    ops: dict[str, Counter] = {}
    for case in report.get("cases", []):
        if case.get("op") not in (None, "api", "model"):
            ops.setdefault(case["op"], Counter())[case["status"]] += 1
    return {"device": report.get("device", {}).get("name"),
            "kind": report.get("device", {}).get("kind"), "seed": report.get("seed"),
            "tier": report.get("tier"), "versions": report.get("versions", {}),
            "backend_version": report.get("backend", {}).get("version"),
            "ops": {op: dict(sorted(c.items())) for op, c in sorted(ops.items())},
            "special_values": summarize(report.get("cases", []))}


def merge_reports(results: dict[str, Any], reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``results`` with each report's results under its backend (a later report of a
    backend replaces the earlier one). Special-value differences add up across reports of
    the same backend version, device and runtime versions (``specials.union``)."""
    out = dict(results)
    for report in reports:
        name, new = report["backend"]["name"], results_of(report)
        old = out.get(name) or {}
        same = all(old.get(k) == new[k] for k in ("backend_version", "device", "versions"))
        if same and "special_values" in old:
            new["special_values"] = union(old["special_values"], new["special_values"])
        out[name] = new
    return dict(sorted(out.items()))


def _cell(support: Any, any_op: bool, domain: str, recorded: tuple[int, ...],
          result: Mapping[str, int] | None) -> str:
    if support is None and not (any_op and domain in ("", "ai.onnx.ml")):
        return ABSENT
    text = versions_text(getattr(support, "versions", None) and set(support.versions),
                         recorded) if support is not None else "all"
    if result:
        failed = sum(n for s, n in result.items() if s in ("fail", "error", "crash", "hang",
                                                             "invalid"))
        passed = sum(n for s, n in result.items() if s in _PASSED)
        if failed:
            text += f" {FAILED}{failed}/{failed + passed}"
        elif passed:
            text += f" {PASSED}{passed}"
        if result.get("special-values"):
            text += f" {SPECIAL}{result['special-values']}"
    return text


def installed_versions() -> dict[str, str]:
    """The installed versions of :data:`RUNTIMES` (package metadata; '-' when absent)."""
    from importlib import metadata

    out = {}
    for name in RUNTIMES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def render(results: Mapping[str, Any], backends: Mapping[str, Any] | None = None) -> str:
    """The page: a summary per backend, then a row per op."""
    backends = dict(backends if backends is not None else registry().backends)
    columns = [b for b in BUILTIN if b in backends]
    caps = {b: backends[b].capabilities for b in columns}
    tables = {b: dict(caps[b].ops) for b in columns}
    ops = all_ops()
    lines = [
        "# Operators and backends",
        "",
        "Generated by `backplane conformance ops` (do not edit): every op of backplane's",
        "operator registry against every built-in backend. A cell gives the versions of the",
        "op the backend declares (`all`, `13+` for 13 and every later version, or a list),",
        f"then, where a stored conformance run covered the op, `{PASSED}N` (N cases passed) or",
        f"`{FAILED}F/N` (F of N failed), and `{SPECIAL}S` where S of them passed with the verdict",
        "special-values (right on ordinary values, different from the oracle on NaN, infinities",
        f"or the sign of zero: listed below); `{ABSENT}` is not declared. Capabilities read on a",
        "machine with " + ", ".join(f"{k} {v}" for k, v in installed_versions().items())
        + f", backplane {__version__}; graph compilers derive theirs from their runtime, so",
        "another version may declare more or less. Conformance results:",
        "`docs/data/conformance-results.json`.",
        "",
        "| backend | ops declared | mandatory | optional | contrib | cases passed | run on |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in columns:
        declared = [d for d in ops if d.key in tables[b] or (
            caps[b].any_op and d.domain in ("", "ai.onnx.ml"))]
        per_tier = Counter(d.tier for d in declared)
        r = results.get(b)
        counts = Counter()
        for c in (r or {}).get("ops", {}).values():
            counts.update(c)
        passed = sum(counts[s] for s in _PASSED)
        ran = passed + sum(counts[s] for s in ("fail", "error", "crash", "hang", "invalid"))
        special = f" ({SPECIAL}{counts['special-values']})" if counts["special-values"] else ""
        lines.append(f"| {b} | {len(declared)} of {len(ops)} | {per_tier['mandatory']} | "
                     f"{per_tier['optional']} | {per_tier['contrib']} | "
                     + (f"{passed} of {ran}{special} | {r['device']} (seed {r['seed']})" if r
                        else "- | not run") + " |")
    lines += _special_values_section(results, columns)
    lines += ["", "| op | tier | versions | " + " | ".join(columns) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " |"]
    for d in ops:
        recorded = tuple(d.versions)
        cells = [_cell(tables[b].get(d.key), caps[b].any_op, d.domain, recorded,
                       (results.get(b) or {}).get("ops", {}).get(d.name if d.domain in
                                                                  ("", "backplane") else d.key))
                 for b in columns]
        lines.append(f"| {d.key} | {d.tier} | {', '.join(map(str, recorded))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _special_values_section(results: Mapping[str, Any], columns: Iterable[str]) -> list[str]:
    """How each backend differs from the oracle on special values, per op."""
    rows = [f"| {b} | {op} | {'; '.join(texts)} |" for b in columns
            for op, texts in ((results.get(b) or {}).get("special_values") or {}).items()]
    measured = [b for b in columns if "special_values" in (results.get(b) or {})]
    if not measured:
        return []
    clean = [b for b in measured if not (results[b].get("special_values"))]
    return ["", f"Special values ({SPECIAL}): where a backend's results differ from the oracle's on",
            "NaN, infinities or the sign of zero, from the same stored runs"
            + (f"; as the oracle: {', '.join(clean)}" if clean else "") + ".", "",
            "| backend | op | what differs |", "| --- | --- | --- |", *rows]


def load_results(path: str | Path) -> dict[str, Any]:
    """The stored results (empty when the file does not exist)."""
    p = Path(path)
    return json.loads(p.read_text("utf-8")) if p.is_file() else {}


def save_results(path: str | Path, results: Mapping[str, Any]) -> None:
    """Write the stored results, one backend per block, reviewable as a diff."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", "utf-8")


def write_shipped_tables(backends: Iterable[str] = ("onnxruntime", "openvino-cpu")
                         ) -> list[str]:
    """Derive each graph compiler's capability table afresh (no cache) and write it where
    the plugin ships it (its ``SHIPPED`` file), keyed by the installed versions: the
    tables a release carries, so that a first Session on a machine with those versions
    does not wait for the derivation. Returns the files written."""
    import sys


    written = []
    for name in backends:
        backend = registry().backends.get(name)
        module = sys.modules[type(backend).__module__] if backend is not None else None
        if module is None or not hasattr(module, "SHIPPED"):
            continue
        data = module.derive(use_cache=False)
        if "unverified" in data:
            raise RuntimeError(f"{name}: the derived table could not be verified here "
                               f"({data['unverified']}); nothing written")
        write_shipped(module.SHIPPED, module.derivation_key(), data)
        written.append(str(module.SHIPPED))
    return written
