#!/usr/bin/env python3
"""Checks that each Python tool the tests and CI steps run can run in this
interpreter's environment, and names what is missing when one cannot.

    $ALEXNET_PYTHON tools/ci/check_python_tools.py tools/onnx_check.py ...

For each tool: every module it imports anywhere (also inside functions, where a
missing package only shows when that path runs) must be findable, either in the
environment or beside the tool; then `tool --help` must exit 0. Exits 1 naming
each tool and missing module, 0 when all can run.
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path


def imported_modules(source):
    """Top-level names of every module a file imports, wherever the import is."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def missing_modules(tool):
    """The modules `tool` imports that neither the environment nor its folder has."""
    beside = {p.stem for p in tool.parent.glob("*.py")}
    missing = []
    for name in sorted(imported_modules(tool.read_text())):
        if name in beside or name == "__future__":
            continue
        if importlib.util.find_spec(name) is None:
            missing.append(name)
    return missing


def help_fails(tool):
    """Why `tool --help` failed in this interpreter, or None when it ran."""
    run = subprocess.run(
        [sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=120
    )
    if run.returncode == 0:
        return None
    return f"`{tool} --help` exited {run.returncode}: {run.stderr.strip()[-2000:]}"


def main(paths):
    if not paths:
        print("usage: check_python_tools.py TOOL.py ...", file=sys.stderr)
        return 2
    problems = []
    for path in paths:
        tool = Path(path)
        if not tool.is_file():
            problems.append(f"{tool}: no such file")
            continue
        missing = missing_modules(tool)
        if missing:
            problems.append(
                f"{tool}: module(s) {', '.join(missing)} not installed in {sys.prefix} "
                "(add them, pinned, to tools/ci/python-requirements.txt)"
            )
            continue
        failure = help_fails(tool)
        if failure:
            problems.append(failure)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"python tools ok in {sys.prefix}: {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
