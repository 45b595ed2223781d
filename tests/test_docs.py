"""The guides' code, executed: every fenced code block of every document in DOCS runs here.

The convention, for whoever writes a guide:

- **One temporary folder per document.** Each document gets a fresh empty folder, TEMP,
  and its blocks run in order, from the top. A document that does not exist yet is
  skipped, with that reason.
- **One test per block**, named ``<document>:L<line>:<kind>`` after the line of the block's
  opening fence, so a failure names the block. Running one block (``-k``) runs the blocks
  before it first; once a block fails, the later blocks of its document are skipped,
  naming it.
- **What a block's info string means** (the words after the opening fence: a language, then
  optional ``key=value`` words):

  - ``python``: run in the document's one Python process (started fresh for the document,
    working folder TEMP, so TEMP is on ``sys.path``). All python blocks of a document run
    in that process in order and share one namespace, like the cells of a notebook: a
    block sees the imports and names of the python blocks above it. Tracebacks carry the
    document's own path and line numbers. ``importlib.invalidate_caches()`` runs before
    each block, so a package that an sh block installed is importable; backplane's
    registry is not refreshed, so call ``bp.registry(refresh=True)`` in a block that must
    see a plugin installed after that process first listed plugins. A failure is an
    exception (``assert`` is the way to check a result).
  - ``sh``: run with ``bash -e -o pipefail -c BLOCK`` in TEMP; it must exit with status 0.
    Each block is a new shell: variables and ``cd`` do not carry over.
  - any language with ``file=PATH`` (```` ```toml file=mypkg/pyproject.toml ````): not run;
    the block is written to TEMP/PATH (folders created, an existing file replaced) for
    later blocks to use. A ``.toml`` or ``.json`` file must parse.
  - ``text``: output shown to the reader, never run (keep these few).
  - anything else fails the test: every code block is run, written, or declared output.
    Only fences of three or more backticks at the start of a line are code blocks (don't
    use indented code blocks in a guide: they are not collected).

- **The environment** of every block, python and sh alike: the venv's ``bin`` first on
  ``PATH`` (``python``, ``pip``, ``backplane``, ``pytest`` are the venv's); ``PYTHONPATH`` is
  TEMP/site; pip installs into TEMP/site, offline and without dependencies or build
  isolation (``PIP_TARGET``, ``PIP_NO_DEPS``, ``PIP_NO_INDEX``, ``PIP_NO_BUILD_ISOLATION``,
  ``PIP_UPGRADE``), so a guide's ``pip install ./my-package`` installs for that document
  only, without touching the venv; ``BACKPLANE_DATA_DIR`` and ``BACKPLANE_CACHE_DIR`` are
  folders in TEMP and no other ``BACKPLANE_*`` variable is inherited.
- **Time**: each block may take BLOCK_TIMEOUT_S seconds.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The documents whose code blocks run, in the order they run.
DOCS = ["docs/writing-a-backend.md", "docs/applications.md", "docs/qualifying-hardware.md",
        "docs/serving.md", "docs/pytorch.md"]
BLOCK_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it opens, its info string's parts, and its text."""

    doc: str
    line: int  # the line of the opening fence, counting from 1
    lang: str
    attrs: dict
    text: str
    problem: str = ""

    @property
    def kind(self) -> str:
        if self.problem:
            return "invalid"
        if "file" in self.attrs:
            return "file"
        return self.lang

    @property
    def id(self) -> str:
        where = f"{Path(self.doc).name}:L{self.line}:{self.kind}"
        return f"{where}={self.attrs['file']}" if self.kind == "file" else where


_FENCE = re.compile(r"^(`{3,})(.*)$")


def blocks_of(doc: str) -> list[Block]:
    """The fenced code blocks of a document, in order; a malformed one carries a problem."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        words = info.split()
        lang = words[0] if words else ""
        attrs, problem = {}, ""
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep or not value:
                problem = f"info string word {word!r} is not key=value"
            attrs[key] = value
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            found.append(Block(doc, i + 1, lang, attrs, "", f"the fence opened at line {i + 1} "
                                                            "is never closed"))
            break
        if not problem and "file" not in attrs and lang not in ("python", "sh", "text"):
            problem = (f"a ```{info or '(no language)'} block is neither run (python, sh), "
                       "written (file=PATH) nor shown output (text)")
        if not problem and set(attrs) - {"file"}:
            problem = f"unknown info string keys {sorted(set(attrs) - {'file'})}"
        found.append(Block(doc, i + 1, lang, attrs, "\n".join(lines[i + 1:end]) + "\n", problem))
        i = end + 1
    return found


def _params() -> list:
    params = []
    for doc in DOCS:
        if not (ROOT / doc).is_file():
            params.append(pytest.param(doc, None, id=f"{Path(doc).name}:missing",
                                       marks=pytest.mark.skip(reason=f"{doc} does not exist yet")))
            continue
        blocks = blocks_of(doc)
        params += [pytest.param(doc, k, id=b.id) for k, b in enumerate(blocks)]
        if not blocks:
            params.append(pytest.param(doc, None, id=f"{Path(doc).name}:no-blocks"))
    return params


# The document's Python process: reads one JSON request per line on stdin, runs the block
# with its output (Python's and any child process's) sent to a file, and answers one JSON
# line on the stdout it started with.
_DRIVER = r"""
import importlib, json, os, sys, traceback
answer = os.fdopen(os.dup(1), "w")
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    request = json.loads(request)
    with open(request["out"], "w") as out:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
        error = None
        try:
            importlib.invalidate_caches()
            code = compile("\n" * (request["line"] - 1) + request["code"], request["path"], "exec")
            exec(code, namespace)
        except BaseException:
            error = traceback.format_exc()
        sys.stdout.flush(); sys.stderr.flush()
    answer.write(json.dumps({"error": error}) + "\n")
    answer.flush()
"""


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


class DocRun:
    """The blocks of one document, run in order in its own folder."""

    def __init__(self, doc: str, folder: Path):
        self.doc, self.folder = doc, folder
        self.blocks = blocks_of(doc)
        self.outcomes: list[str | None] = []  # None: ran fine; else why it failed
        self.python: subprocess.Popen | None = None
        (folder / "site").mkdir()
        venv_bin = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BACKPLANE_", "PIP_")) and k not in ("PYTHONPATH",)}
        env.update({
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": str(folder / "site"),
            "PIP_TARGET": str(folder / "site"), "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1",
            # pip reads this switch inverted: "false" turns build isolation off.
            "PIP_NO_BUILD_ISOLATION": "false", "PIP_UPGRADE": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
            "BACKPLANE_DATA_DIR": str(folder / ".backplane-data"),
            "BACKPLANE_CACHE_DIR": str(folder / ".backplane-cache"),
        })
        self.env = env

    def outcome(self, index: int) -> str | None:
        """Run the blocks up to ``index``; the failure of block ``index``, or None."""
        while len(self.outcomes) <= index:
            k = len(self.outcomes)
            failed = next((self.blocks[j] for j, o in enumerate(self.outcomes) if o), None)
            if failed is not None:
                pytest.skip(f"not run: the block at {failed.doc}:{failed.line} failed")
            self.outcomes.append(self._run(self.blocks[k]))
        return self.outcomes[index]

    def _run(self, block: Block) -> str | None:
        if block.problem:
            return block.problem
        if block.kind == "text":
            return None
        if block.kind == "file":
            return self._write(block)
        if block.kind == "sh":
            return self._sh(block)
        return self._python(block)

    def _write(self, block: Block) -> str | None:
        path = (self.folder / block.attrs["file"]).resolve()
        if self.folder.resolve() not in path.parents:
            return f"file={block.attrs['file']} is outside the document's folder"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text, encoding="utf-8")
        try:
            if path.suffix == ".toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10
                    import tomli as tomllib

                tomllib.loads(block.text)
            elif path.suffix == ".json":
                json.loads(block.text)
        except ValueError as exc:
            return f"{block.attrs['file']} does not parse: {exc}"
        return None

    def _sh(self, block: Block) -> str | None:
        try:
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text],
                                  cwd=self.folder, env=self.env, capture_output=True,
                                  text=True, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(
                exc.stdout, bytes) else (exc.stdout or "")
            return f"still running after {BLOCK_TIMEOUT_S} s\n{_tail(out)}"
        if done.returncode != 0:
            return (f"exit status {done.returncode}\n--- stdout\n{_tail(done.stdout)}\n"
                    f"--- stderr\n{_tail(done.stderr)}")
        return None

    def _python(self, block: Block) -> str | None:
        if self.python is None:
            self.python = subprocess.Popen(
                [sys.executable, "-u", "-c", _DRIVER], cwd=self.folder, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        out = self.folder / f".block-{block.line}.out"
        request = {"code": block.text, "line": block.line + 1, "out": str(out),
                   "path": str(ROOT / block.doc)}
        try:
            self.python.stdin.write(json.dumps(request) + "\n")
            self.python.stdin.flush()
        except BrokenPipeError:
            return self._died(out)
        ready, _, _ = select.select([self.python.stdout], [], [], BLOCK_TIMEOUT_S)
        if not ready:
            self.close()
            return f"still running after {BLOCK_TIMEOUT_S} s\n{self._output(out)}"
        reply = self.python.stdout.readline()
        if not reply:
            return self._died(out)
        error = json.loads(reply)["error"]
        return None if error is None else f"{error}--- output\n{self._output(out)}"

    def _died(self, out: Path) -> str:
        self.python.wait(10)
        code = self.python.returncode
        self.python = None
        return f"the document's Python process died (exit status {code})\n{self._output(out)}"

    @staticmethod
    def _output(out: Path) -> str:
        return _tail(out.read_text(errors="replace")) if out.exists() else ""

    def close(self) -> None:
        if self.python is not None:
            self.python.kill()
            self.python.wait()
            self.python = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """The document runs of this module, by document, closed at the end."""
    made: dict[str, DocRun] = {}

    def get(doc: str) -> DocRun:
        if doc not in made:
            made[doc] = DocRun(doc, tmp_path_factory.mktemp(Path(doc).stem))
        return made[doc]

    yield get
    for run in made.values():
        run.close()


@pytest.mark.parametrize("doc, index", _params())
def test_doc_block_runs(doc: str, index: int | None, runs) -> None:
    if index is None:
        pytest.fail(f"{doc} has no code block; a guide shows its code, and this runs it")
    failure = runs(doc).outcome(index)
    if failure:
        block = runs(doc).blocks[index]
        pytest.fail(f"{block.doc}:{block.line} ({block.kind}): {failure}", pytrace=False)


def test_the_block_convention_is_enforced(tmp_path, monkeypatch):
    """A malformed guide is reported by line: an unknown language, a stray word, an
    unclosed fence."""
    doc = tmp_path / "guide.md"
    doc.write_text("```toml\na = 1\n```\n\n```sh quiet\ntrue\n```\n\n```python\nx = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = blocks_of("guide.md")
    assert [(b.line, bool(b.problem)) for b in found] == [(1, True), (5, True), (9, True)]
    assert "neither run" in found[0].problem and "never closed" in found[2].problem
