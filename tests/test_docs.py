"""Every ```python block of docs/*.md runs as written (README.md: tests/test_readme.py).
A document's blocks run in order in one namespace, as a reader would paste them."""

import contextlib
import io
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
FILES = sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text())


def test_the_docs_have_examples():
    assert {"operations.md", "tuning.md", "2pc.md"} <= set(FILES)


@pytest.mark.service     # the examples start LocalClusters
@pytest.mark.parametrize("name", FILES)
def test_doc_code_blocks_run(name):
    src = (DOCS / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", src, re.S)
    out = io.StringIO()
    ns: dict = {}
    with contextlib.redirect_stdout(out):
        for k, code in enumerate(blocks):
            exec(compile(code, f"{name}[block {k}]", "exec"), ns)
    assert out.getvalue().strip(), "an example prints what it shows"
    if name == "operations.md":
        assert out.getvalue().split() == ["2", "True"]
    if name == "tuning.md":
        assert out.getvalue().split() == ["uniform", "True"]
    if name == "2pc.md":
        assert out.getvalue().splitlines() == ["prepared: only commit/abort remain", "[]"]
