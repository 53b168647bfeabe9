"""The documentation against the code: the generated configuration reference, links, commands and make targets.

The checkers take a Markdown file's text and return its problems as "file:line: what is wrong"; they read prose and
code the way GitHub renders them (links in fenced code blocks and code spans are text, not links), and each is
tested on a made-up page so that a checker that finds nothing is known to be able to find something.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from ebft.cli import build_parser, main
from ebft.reference import REFERENCE_PATH, reference_markdown, unique_anchor
from ebft.schema import schema_text

REPO = Path(__file__).resolve().parent.parent
REGENERATE = ".venv/bin/ebft schema --markdown > docs/configuration.md"


def doc_files(*, history: bool = True) -> list[Path]:
    """The repository's Markdown documentation that exists now (README.md always); CHANGELOG.md with ``history``."""
    assert (REPO / "README.md").is_file(), "README.md is missing"
    names = ["README.md", "CHANGELOG.md", "config/README.md"] if history else ["README.md", "config/README.md"]
    files = [REPO / name for name in names if (REPO / name).is_file()]
    return files + sorted((REPO / "docs").glob("*.md"))


# --------------------------------------------------------------------------------------------------
# Reading Markdown: prose with its code blanked, the code it shows, and the anchors of its headings
# --------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)


@functools.lru_cache(maxsize=64)
def parse_markdown(text: str) -> tuple[str, tuple[tuple[int, str], ...], tuple[tuple[int, str], ...]]:
    """(the text with fenced code and code spans blanked, line breaks kept; the code it shows as (line, text), a
    fenced block's lines with their backslash continuations joined; its headings as (line, text))."""
    lines = text.split("\n")
    prose, code, headings = list(lines), [], []
    fence, block = None, []

    def end_block():
        logical, start = "", None
        for number, line in block:
            start = number if start is None else start
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            code.append((start, logical + line))
            logical, start = "", None
        if start is not None:
            code.append((start, logical))
        block.clear()

    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if fence is not None:
            prose[i] = ""
            if match and match.group(1).startswith(fence) and not match.group(2).strip():  # the closing fence
                fence = None
                end_block()
            else:
                block.append((i + 1, line))
            continue
        if match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
            fence, prose[i] = match.group(1), ""
            continue
        heading = re.match(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$", line)
        if heading:
            headings.append((i + 1, heading.group(1) or ""))
        elif re.match(r"^ {0,3}(=+|-+)[ \t]*$", line) and i and _setext_text(lines, i):
            headings.append((i, lines[i - 1].strip()))
    if fence is not None:  # an unclosed fence runs to the end of the file
        end_block()
    masked = "\n".join(prose)
    chars = list(masked)
    for hidden in [*CODE_SPAN.finditer(masked), *re.finditer(r"<!--.*?-->", masked, re.S)]:
        if hidden.group(0).startswith("`"):
            code.append((masked.count("\n", 0, hidden.start()) + 1, " ".join(hidden.group(2).split())))
        for j in range(hidden.start(), hidden.end()):
            if chars[j] != "\n":
                chars[j] = " "
    return "".join(chars), tuple(sorted(code)), tuple(headings)


def _setext_text(lines: list[str], i: int) -> bool:
    """Whether line ``i`` underlines the one above it as a heading: a paragraph of one plain line."""
    above = lines[i - 1]
    if not above.strip() or re.match(r"^\s*([-*+>|#]|\d+[.)]\s|`{3}|~{3})", above):
        return False
    return i == 1 or not lines[i - 2].strip()


def anchors(text: str) -> set[str]:
    """Every #fragment a Markdown text defines: its headings' anchors (a repeated one gets -1, -2, …), and HTML ids."""
    masked, _, headings = parse_markdown(text)
    seen: dict[str, int] = {}
    out = {unique_anchor(heading, seen) for _, heading in headings}
    out.update(m.group(2) for m in re.finditer(r"<[a-z]+\b[^>]*\s(id|name)\s*=\s*[\"']([^\"']+)[\"']", masked, re.I))
    return out


# --------------------------------------------------------------------------------------------------
# The checkers: (text, path) → ["file:line: what is wrong", …]
# --------------------------------------------------------------------------------------------------

INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^<>\n]*>|[^\s()<>]*(?:\([^\s()]*\)[^\s()<>]*)*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
IMAGE_IN_LINK = re.compile(r"(?<=\[)!\[[^\[\]]*\]\(\s*(<[^<>\n]*>|[^\s()<>]+)(?:\s+\"[^\"]*\")?\s*\)(?=\]\()")
REFERENCE_DEF = re.compile(r"^ {0,3}\[([^\]^][^\]]*)\]:[ \t]*(<[^<>\n]*>|\S+)", re.M)
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\s(?:src|href)\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>]+)", re.I)
WEB = re.compile(r"^(https?|mailto):", re.I)


def where(path: Path, root: Path) -> str:
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def link_problems(text: str, path: Path, root: Path = REPO) -> list[str]:
    """Relative links and images of a Markdown text that do not resolve: a missing file, a file outside ``root``, or
    a #fragment that is no heading of the Markdown file it points into."""
    path, root = Path(path).resolve(), Path(root).resolve()
    masked, _, _ = parse_markdown(text)
    found = [(m.start(1), m.group(1)) for m in INLINE_LINK.finditer(masked)]
    found += [(m.start(1), m.group(1)) for m in IMAGE_IN_LINK.finditer(masked)]  # a badge's image
    found += [(m.start(2), m.group(2)) for m in REFERENCE_DEF.finditer(masked)]
    found += [(m.start(1), m.group(1).strip("\"'")) for m in HTML_LINK.finditer(masked)]
    problems = []
    for offset, target in sorted(found):
        why = target_problem(target.strip("<>"), path, root)
        if why:
            problems.append(f"{where(path, root)}:{masked.count(chr(10), 0, offset) + 1}: link {target!r} {why}")
    return problems


def target_problem(target: str, path: Path, root: Path) -> str | None:
    """Why one link target of the file at ``path`` does not resolve, or None (web links are not followed)."""
    if WEB.match(target):
        return None
    if not target:
        return "is empty"
    file_part, _, fragment = unquote(target).partition("#")
    file = path
    if file_part:
        file = Path(os.path.normpath(path.parent / file_part.split("?")[0]))
        if not file.resolve().is_relative_to(root):
            return "points outside the repository"
        if not file.exists():
            return f"does not exist ({where(file, root)})"
    if fragment and file.suffix.lower() == ".md" and file.is_file():
        known = anchors(file.read_text(encoding="utf-8"))
        if fragment not in known:
            near = difflib.get_close_matches(fragment, sorted(known), n=1)
            hint = f"; did you mean #{near[0]}?" if near else ""
            return f"names no heading of {where(file, root)}{hint}"
    return None


SEPARATORS = {"|", "||", "&&", ";", "&", "|&", ";;", "(", ")"}
WRAPPERS = {"time", "exec", "env", "nohup", "sudo", "command", "nice", "$"}


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a line of shell, as words: split at |, &&, ; …, cut at a redirection or a # comment,
    with leading VAR=value assignments, a `$` prompt and wrappers such as `time` dropped."""
    try:
        lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:  # an unclosed quote: prose in a code span
        words = code.split()
    commands, current, redirected = [], [], False
    for word in [*words, ";"]:
        if word in SEPARATORS:
            if current:
                commands.append(current)
            current, redirected = [], False
        elif redirected or set(word) <= set("<>&") or word.startswith((">", "<")):
            redirected = True
        elif current or not (word in WRAPPERS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word)):
            current.append(word)
    return commands


def placeholder(word: str) -> bool:
    """A word that stands for one: COMMAND, …, or <name>-like."""
    return word.isupper() or "…" in word or "..." in word or "<" in word


@functools.lru_cache(maxsize=1)
def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The ``ebft`` parser's own options and {subcommand: its options}."""
    parser = build_parser()
    top = {s for action in parser._actions for s in action.option_strings}
    sub = next(a for a in parser._actions if a.choices and hasattr(a, "add_parser"))
    return top, {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def ebft_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """(how the command was named, the words after it) when a simple command runs `ebft`, else None."""
    head = words[0]
    if head == "ebft" or head.endswith("/ebft"):
        return head, words[1:]
    if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", head) and words[1:3] == ["-m", "ebft.cli"]:
        return "python -m ebft.cli", words[3:]
    if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", head) and words[1:3] == ["-m", "ebft"]:
        return "python -m ebft", words[3:]
    return None


def ebft_command_problems(text: str, path: Path, root: Path = REPO) -> list[str]:
    """`ebft` commands shown in code whose subcommand or --option the CLI does not have."""
    top, subcommands = cli_options()
    problems = []
    for line, code in parse_markdown(text)[1]:
        for words in shell_commands(code):
            run = ebft_invocation(words)
            if run is None:
                continue
            name, rest = run
            at = f"{where(path, root)}:{line}: `{code}`"
            if name == "python -m ebft" and not (REPO / "ebft" / "__main__.py").is_file():
                problems.append(f"{at}: there is no ebft/__main__.py; run `python -m ebft.cli` or `ebft`")
                continue
            command = next((w for w in rest if not w.startswith("-")), None)
            before = rest[: rest.index(command)] if command else rest
            options = top
            if command is not None and not placeholder(command):
                if command not in subcommands:
                    problems.append(f"{at}: `{command}` is not an ebft subcommand (they are: "
                                    f"{', '.join(sorted(subcommands))})")  # fmt: skip
                    continue
                options = top | subcommands[command]
            elif command is not None:
                continue  # a placeholder subcommand: its options are unknown
            after = rest[len(before) + 1 :] if command else []
            for word in before + after:
                if word == "--":
                    break
                option = word.split("=", 1)[0]
                if option.startswith("--") and option not in options and not placeholder(option):
                    for_what = f"`ebft {command}`" if command and word in after else "`ebft`"
                    problems.append(f"{at}: {option} is not an option of {for_what}")
    return problems


def makefile_targets(text: str) -> set[str]:
    """The targets a Makefile names: every rule line's targets (not pattern or variable ones) and .PHONY's."""
    targets = set()
    for line in text.splitlines():
        if line.startswith("\t") or line.lstrip().startswith("#"):
            continue
        rule = re.match(r"^([^\s:=#][^:=#]*?)\s*::?(?!=)\s*(.*)$", line)
        if not rule:
            continue
        names, rest = rule.group(1).split(), rule.group(2).split("#")[0].split()
        if names == [".PHONY"]:
            targets.update(rest)
        targets.update(n for n in names if not n.startswith(".") and "$" not in n and "%" not in n)
    return targets


def make_target_problems(text: str, path: Path, root: Path = REPO, targets: set[str] | None = None) -> list[str]:
    """`make <target>` commands shown in code whose target the Makefile does not have."""
    if targets is None:
        targets = makefile_targets((REPO / "Makefile").read_text())
    problems = []
    for line, code in parse_markdown(text)[1]:
        for words in shell_commands(code):
            if words[0] != "make":
                continue
            args = words[1:]
            if any(a.startswith(("-C", "-f", "--file", "--directory")) for a in args):
                continue  # another Makefile
            for before, word in zip(["", *args], args, strict=False):
                if word.startswith("-") or "=" in word or placeholder(word):
                    continue  # an option, a VAR=value assignment
                if word.isdigit() and before in ("-j", "-l"):
                    continue  # the number of jobs
                if word not in targets:
                    problems.append(f"{where(path, root)}:{line}: `{code}`: the Makefile has no target {word!r} "
                                    f"(it has: {', '.join(sorted(targets))})")  # fmt: skip
    return problems


# --------------------------------------------------------------------------------------------------
# The documentation as it is
# --------------------------------------------------------------------------------------------------


def test_the_configuration_reference_is_the_generated_one():
    expected = reference_markdown()
    have = REFERENCE_PATH.read_text(encoding="utf-8") if REFERENCE_PATH.is_file() else ""
    old, new = have.splitlines(True), expected.splitlines(True)
    first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))) + 1
    diff = "".join(list(difflib.unified_diff(old, new, "docs/configuration.md", "reference_markdown()", n=1))[:40])
    assert have == expected, (f"docs/configuration.md:{first}: differs from the reference generated from "
                              f"ebft/config.py; run `{REGENERATE}`\n{diff}")  # fmt: skip


def test_ebft_schema_prints_the_schema_or_with_markdown_the_reference(capsys):
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == reference_markdown()


def test_every_relative_link_and_image_resolves():
    problems = [p for file in doc_files() for p in link_problems(file.read_text(encoding="utf-8"), file)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_ebft_command_shown_exists():
    problems = [p for file in doc_files(history=False) for p in ebft_command_problems(file.read_text("utf-8"), file)]
    assert not problems, "ebft commands the CLI does not have:\n" + "\n".join(problems)


def test_every_make_target_shown_exists():
    problems = [p for file in doc_files(history=False) for p in make_target_problems(file.read_text("utf-8"), file)]
    assert not problems, "make targets the Makefile does not have:\n" + "\n".join(problems)


def test_nothing_tracked_refers_to_files_outside_the_repository():
    needles = ["../" + "shared", "EBFT" + "_SPEC"]  # built here, so that this file does not hold them
    # tracked files, and the new ones a commit would add (not those git ignores)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=False)  # fmt: skip
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    problems = []
    for name in sorted(set(listed.stdout.decode().split("\0"))):
        file = REPO / name
        if not name or not file.is_file():
            continue
        data = file.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            problems += [f"{name}:{number}: refers to {needle!r}, outside the repository" for needle in needles
                         if needle in line]  # fmt: skip
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------
# The checkers find what they should, and only that
# --------------------------------------------------------------------------------------------------

PAGE = """\
# A page

See [the readme](../README.md), [its title](../README.md#the-title), [a section](#a-section-twice--code-1),
![a figure](figures/there.png "a title") and <img src="figures/there.png"> <a href="https://example.com">x</a>.
Broken: [missing](missing.md) and ![no figure](figures/nope.png) on one line, [![a badge](nope.svg)](https://x.org),
[a bad fragment](#no-such-heading) and [another](../README.md#not-there), [out](../../outside.md).

[ref]: ../nowhere.md

## A section (twice) → `code`

Prose: `[in a code span](nowhere.md)`, `ebft.rewards.feature_rewards`, `make test`,
`ebft train --method ebft --task qa_code`, `.venv/bin/ebft schema --markdown > docs/configuration.md`,
`ebft --version`, `make PROFILE=config/smoke.yaml dry-run` and `make reproduce CORES=2`.

## A section (twice) → `code`

```bash
ebft no-such-command --config config/cpu.yaml   # a comment --not-an-option
make no-such-target
cat [in a block](nowhere.md)
.venv/bin/ebft train --method sft \\
    --no-such-flag
python -m ebft.cli check --config config/smoke.yaml --runs | head && make test
```

<img src="figures/gone.png" alt="gone">
<!-- [a comment](nowhere.md) -->
"""


@pytest.fixture
def page(tmp_path) -> Path:
    (tmp_path / "README.md").write_text("# The title\n\ntext\n")
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "figures" / "there.png").write_bytes(b"\x89PNG")
    file = tmp_path / "docs" / "page.md"
    file.write_text(PAGE)
    return file


def test_the_link_checker_finds_broken_links_and_only_those(page, tmp_path):
    problems = link_problems(page.read_text(), page, root=tmp_path)
    assert problems == [
        "docs/page.md:5: link 'missing.md' does not exist (docs/missing.md)",
        "docs/page.md:5: link 'figures/nope.png' does not exist (docs/figures/nope.png)",
        "docs/page.md:5: link 'nope.svg' does not exist (docs/nope.svg)",
        "docs/page.md:6: link '#no-such-heading' names no heading of docs/page.md",
        "docs/page.md:6: link '../README.md#not-there' names no heading of README.md",
        "docs/page.md:6: link '../../outside.md' points outside the repository",
        "docs/page.md:8: link '../nowhere.md' does not exist (nowhere.md)",
        "docs/page.md:27: link 'figures/gone.png' does not exist (docs/figures/gone.png)",
    ]


def test_heading_anchors_follow_githubs_rules():
    text = "# A section (twice) → `code`\n\n## A section (twice) → `code`\n\n## § 3. Über `x.y` <b>bold</b> `<name>`\n\nSetext\n---\n"
    assert anchors(text) == {"a-section-twice--code", "a-section-twice--code-1", "-3-über-xy-bold-name", "setext"}
    assert anchors("```\n# not a heading\n```\n") == set()


def test_the_ebft_command_checker_finds_unknown_subcommands_and_options(page, tmp_path):
    problems = ebft_command_problems(page.read_text(), page, root=tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == ["docs/page.md:19", "docs/page.md:22"]
    assert "`no-such-command` is not an ebft subcommand" in problems[0]
    assert "--no-such-flag is not an option of `ebft train`" in problems[1]


def test_the_make_target_checker_finds_unknown_targets(page, tmp_path):
    targets = makefile_targets("X := 1\n.PHONY: test dry-run\nreproduce: setup\n\t$(BIN)/ebft check\n$(STAMP): a\n")
    assert targets == {"test", "dry-run", "reproduce"}
    problems = make_target_problems(page.read_text(), page, root=tmp_path, targets=targets)
    assert len(problems) == 1 and problems[0].startswith("docs/page.md:20: `make no-such-target`: the Makefile has")


def test_shell_commands_split_where_the_shell_does():
    assert shell_commands("FOO=1 time ebft check --runs | head -3 && make test > out.txt 2>&1; echo '#x' # c") == [
        ["ebft", "check", "--runs"], ["head", "-3"], ["make", "test"], ["echo", "#x"]]  # fmt: skip
    assert shell_commands("from ebft import cli") == [["from", "ebft", "import", "cli"]]  # not a command of ebft


# --------------------------------------------------------------------------------------------------
# What the pages state against the results, the code and the files they describe
# --------------------------------------------------------------------------------------------------


def _rows(text: str) -> set[str]:
    """The rows of every Markdown table in ``text``, normalised (case, the minus sign, spaces)."""
    rows = set()
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.add(" ".join(line.lower().replace("−", "-").split()))
    return rows


def test_the_readme_has_at_most_250_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/ (at most 250)"


def test_the_claims_the_readme_and_results_page_show_are_the_committed_ones():
    claims = _rows((REPO / "results/cpu/tables/claims.md").read_text(encoding="utf-8"))
    main_table = _rows((REPO / "results/cpu/tables/main.md").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = {row for row in _rows(readme) if row.startswith(("| qa_code", "| unstructured_code", "| translation"))}
    assert len(shown) >= 10, "README.md should show the claims table"
    assert not shown - claims, f"README.md shows claims that results/cpu/tables/claims.md lacks: {shown - claims}"
    results = _rows((REPO / "docs/results.md").read_text(encoding="utf-8"))
    assert main_table <= results, f"docs/results.md lacks rows of main.md: {sorted(main_table - results)[:3]}"
    verdicts = ("| supported |", "| contradicted |", "| inconclusive |", "| not measured |")
    claim_rows = {row for row in claims if any(verdict in row for verdict in verdicts)}  # not the paired differences
    assert len(claim_rows) == 15 and claim_rows <= results, f"docs/results.md lacks {sorted(claim_rows - results)[:3]}"


def test_the_readme_layout_names_every_module_and_committed_top_level_file():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    words = set(re.findall(r"[\w.\-/]+", layout.replace(",", " ")))
    missing = [f"{package}/{module.stem}" for package in ("ebft", "baselines", "evals", "benchmarks")
               for module in sorted((REPO / package).glob("*.py"))
               if module.stem != "__init__" and module.stem not in words]  # fmt: skip
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False).stdout.split()
    top = sorted({name.split("/", 1)[0] + ("/" if "/" in name else "") for name in listed})
    missing += [name for name in top if not any(word == name.rstrip("/") or word.startswith(name) for word in words)]
    assert not missing, f"README.md's Layout does not name: {', '.join(missing)}"


def _example(path: str, marker: str, **paths: str) -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / path).read_text(encoding="utf-8"), flags=re.S)
    example = next(block for block in blocks if marker in block)
    for placeholder_path, real in paths.items():
        example = example.replace(placeholder_path, real)
    return example


def test_the_documented_example_profiles_are_valid_and_read_their_data(tmp_path, tiny_model_dir, capsys):
    """docs/custom.md's whole profile and config/README.md's sketch, with a tiny model and data in their places."""
    data = tmp_path / "my_task"
    data.mkdir()
    for split, numbers in (("train", range(40)), ("test", range(40, 48))):  # a held-out row repeating one is refused
        rows = [f'{{"question": "What is {i} plus {i + 1}? ", "answer": "{i} plus {i + 1} is {2 * i + 1}."}}'
                for i in numbers]  # fmt: skip
        (data / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    custom = tmp_path / "custom.yaml"
    custom.write_text(_example("docs/custom.md", "profile: mine", **{"/models/my-model": str(tiny_model_dir),
                                                                        "/data/my_task": str(data)}))  # fmt: skip
    sketch = tmp_path / "sketch.yaml"
    sketch.write_text(_example("config/README.md", "profile: mine", **{"/models/my-model": str(tiny_model_dir)}))
    for profile in (custom, sketch):
        assert main(["check", "--config", str(profile)]) == 0, capsys.readouterr().err
    assert "no problem found" in capsys.readouterr().out
    out = tmp_path / "data"
    assert main(["prepare-data", "--config", str(custom), "--task", "my_task", "--out", str(out)]) == 0
    lines = {name: (out / name).read_text().count("\n") for name in ("train.jsonl", "heldout.jsonl")}
    assert lines == {"train.jsonl": 40, "heldout.jsonl": 8}


def code_reference_problems(text: str, path: Path, root: Path = REPO) -> list[str]:
    """Links such as [`ebft.rewards.feature_rewards`](../ebft/rewards.py) whose function, class or constant the linked
    file does not define, and `test_…` names that no test file defines."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for name, target in re.findall(r"\[`([\w.]+)`\]\(([^)#\s]+\.py)\)", line):
            source = (path.parent / target).resolve()
            defined = source.is_file() and re.search(rf"^\s*(?:def|class) {re.escape(name.rsplit('.', 1)[-1])}\b|"
                                                     rf"^{re.escape(name.rsplit('.', 1)[-1])}\s*[:=]",
                                                     source.read_text(encoding="utf-8"), flags=re.M)  # fmt: skip
            if "." in name and not defined:
                problems.append(f"{where(path, root)}:{number}: `{name}` is not defined in {target}")
    tests = "\n".join(file.read_text(encoding="utf-8") for file in sorted((root / "tests").glob("test_*.py")))
    for number, line in enumerate(text.splitlines(), 1):
        for name in re.findall(r"`(test_\w+)`", line):
            if not re.search(rf"^def {name}\(", tests, flags=re.M):
                problems.append(f"{where(path, root)}:{number}: no test is named {name}")
    return problems


def test_the_functions_and_tests_the_pages_point_to_exist():
    problems = [p for file in doc_files(history=False) for p in code_reference_problems(file.read_text("utf-8"), file)]
    assert not problems, "\n".join(problems)


def test_the_code_reference_checker_finds_what_is_not_defined(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def there():\n    pass\n\n\nclass Here:\n    pass\n\nLIMIT = 3\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text("def test_real():\n    pass\n")
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("[`pkg.mod.there`](../pkg/mod.py), [`pkg.mod.Here`](../pkg/mod.py), "
                    "[`pkg.mod.LIMIT`](../pkg/mod.py)\n[`pkg.mod.gone`](../pkg/mod.py) `test_real` `test_gone`\n")  # fmt: skip
    assert code_reference_problems(page.read_text(), page, root=tmp_path) == [
        "docs/page.md:2: `pkg.mod.gone` is not defined in ../pkg/mod.py",
        "docs/page.md:2: no test is named test_gone",
    ]
