"""docs/ops.md is generated (backplane conformance ops) and kept current."""

from __future__ import annotations

import re

import pytest

from backplane.conformance.opsdoc import installed_versions, load_results, render, versions_text
from conftest import ROOT

PAGE = ROOT / "docs" / "ops.md"
RESULTS = ROOT / "docs" / "data" / "conformance-results.json"


def test_versions_are_written_as_all_a_tail_or_a_list():
    recorded = (1, 11, 13, 21, 23, 24, 25)
    assert versions_text(None, recorded) == "all"
    assert versions_text(set(recorded), recorded) == "all"
    assert versions_text({13, 21, 23, 24, 25}, recorded) == "13+"
    assert versions_text({1, 13, 25}, recorded) == "1, 13, 25+"
    assert versions_text(set(), recorded) == ""


def test_the_page_is_what_the_command_writes_from_the_stored_results():
    text = PAGE.read_text("utf-8")
    recorded = dict(re.findall(r"(\w+) ([\w.+-]+)(?:,| and)", text.split("machine with ", 1)[1]
                               .split(";", 1)[0]))
    mismatch = {k: (recorded.get(k), v) for k, v in installed_versions().items()
                if recorded.get(k) != v}
    if mismatch:
        pytest.skip(f"docs/ops.md was written with other runtimes: {mismatch}; "
                    "backplane conformance ops -o docs/ops.md rewrites it")
    assert text == render(load_results(RESULTS)), \
        "docs/ops.md is stale: run backplane conformance ops -o docs/ops.md"
