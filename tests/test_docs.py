"""README and docs/ say what the commands accept, and README's examples run on a fresh clone."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
import typer
from conftest import REPO

from edgeseg.cli import app

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "models" / "README.md",
         REPO / "calibration" / "README.md"]


def code_lines(text: str) -> list[str]:
    """Lines of fenced and 4-space-indented code blocks, continuation backslashes joined."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            lines.append(line.strip())
    joined = "\n".join(lines).replace("\\\n", " ")
    return [line for line in joined.splitlines() if line]


def edgeseg_commands(text: str) -> list[list[str]]:
    """Each ``edgeseg SUB ...`` command in code blocks and inline code, cut at shell operators and comments."""
    out = []
    inline = [m.replace("\n", " ") for m in re.findall(r"`(edgeseg [^`]+)`", text)]
    for line in [*code_lines(text), *inline]:
        for m in re.finditer(r"(?:^|&&|;|\|)\s*(edgeseg\s[^#;&|]*)", line):
            try:
                out.append(shlex.split(m.group(1))[1:])
            except ValueError:  # quotes spanning an operator: checked by hand
                continue
    return out


def test_every_documented_command_and_option_exists():
    root = typer.main.get_command(app)
    seen = 0
    for page in PAGES:
        for args in edgeseg_commands(page.read_text()):
            where = f"{page.relative_to(REPO)}: edgeseg {' '.join(args)}"
            assert args and args[0] in root.commands, f"{where}: no such command"
            command = root.commands[args[0]]
            if hasattr(command, "commands"):  # a group (edgeseg triton repo ...)
                assert len(args) > 1 and args[1] in command.commands, f"{where}: no such command"
                command, args = command.commands[args[1]], args[1:]
            options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            unknown = [a.split("=")[0] for a in args[1:] if a.startswith("--") and a.split("=")[0] not in options]
            assert not unknown, f"{where}: unknown option(s) {unknown}"
            seen += 1
    assert seen >= 60, seen  # the walk found the docs' commands


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) <= 6
    r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.match(r"pet or border: \d+% of the photo, \S", r.stdout), r.stdout


@pytest.mark.slow
def test_readme_examples_run_on_a_fresh_clone_twice_and_write_only_under_out(tmp_path):
    """The README block that promises to run on a fresh clone, run twice in a copy holding only what git would
    clone: the second run must not stop at "already exists", and nothing may land outside out/ (ignored)."""
    text = (REPO / "README.md").read_text()
    block = text.split("A few examples, each running on a fresh clone", 1)[1].split("\n\n")[1]
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert commands[0] == ["mkdir", "-p", "out"] and len(commands) >= 6
    assert all(c[0] == "edgeseg" for c in commands[1:])
    clone = tmp_path / "clone"  # what a clone of this working tree holds: files git tracks or would add
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    before = {p for p in clone.rglob("*") if p.is_file()}
    edgeseg = [sys.executable, "-m", "edgeseg"]
    for _ in range(2):
        for c in commands:
            r = subprocess.run([*edgeseg, *c[1:]] if c[0] == "edgeseg" else c, cwd=clone, capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, (c, r.stdout[-2000:], r.stderr[-2000:])
    assert len(list((clone / "out" / "overlays").glob("*.jpg"))) == 37
    added = {p for p in clone.rglob("*") if p.is_file()} - before
    assert added and all(p.relative_to(clone).parts[0] == "out" or "__pycache__" in p.parts for p in added), \
        sorted(str(p.relative_to(clone)) for p in added if p.relative_to(clone).parts[0] != "out")[:5]
    assert (REPO / ".gitignore").read_text().splitlines().count("/out/") == 1


def test_help_names_values_plainly_and_explains_every_option(cli):
    root = typer.main.get_command(app)
    for name, sub in root.commands.items():
        r = cli(name, "--help")
        assert r.code == 0, r.err
        for typer_type in ("<bool>", "<str>", "<int>", "<float>", "<path>", "list[", "{path}"):
            assert typer_type not in r.out, f"edgeseg {name} --help shows {typer_type}"
        undocumented = [p.name for p in sub.params if p.param_type_name == "option" and not p.help]
        assert not undocumented, f"edgeseg {name}: options without help: {undocumented}"
    for name in ("run", "eval", "bench"):
        backend = next(p for p in root.commands[name].params if p.name == "backend")
        assert "openvino" in backend.help and "onnxruntime" in backend.help
