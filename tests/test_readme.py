"""The README's first screen must run as written."""

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.service     # the second example starts a LocalCluster
def test_readme_example_runs():
    src = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", src, re.S))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert "b was the victim" in lines[1]
    assert lines[2] == "1"


def test_readme_has_two_commands():
    src = (ROOT / "README.md").read_text()
    cmds = [line.strip() for line in src.splitlines() if line.startswith("    pip install")]
    assert len(cmds) == 2
    assert cmds[0] == "pip install -e . && lockmgr bench", "the main job is lockmgr bench on its default target"
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci, "the CI must run the README's test command"
