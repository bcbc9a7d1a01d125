"""What a user reads first: the README's links resolve inside the repository, the license is there and
matches the package metadata, install commands install from source, its Python runs and prints
what it shows, and the defaults the docs describe are the code's."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_links_stay_in_the_repository_and_exist():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "the README links to the examples and notes"
    for target in local:
        path = (ROOT / target).resolve()
        assert ROOT in path.parents or path == ROOT, f"{target} is outside the repository"
        assert path.exists(), f"{target} does not exist"
    assert "../" not in README and "shared/spec" not in README


def test_contract_note_exists_and_notes_do_not_cite_outside_files():
    assert (ROOT / "proofs_notes" / "contract.md").is_file()
    for note in (ROOT / "proofs_notes").glob("*.md"):
        assert "../shared" not in note.read_text(), note.name


def test_license_file_matches_the_package_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_install_commands_install_from_source():
    """tempo-rl is not on PyPI: every `pip install` of it in the README and the docs names the source
    tree or a wheel, extras included (`pip install -e '.[train]'`, never `'tempo-rl[train]'`)."""
    pages = [README, *(p.read_text() for p in (ROOT / "docs").rglob("*.md"))]
    for line in (line for text in pages for line in text.splitlines()):
        m = re.search(r"pip install ([^#`]*)", line)
        if m and re.search(r"(^|\s)[\"']?tempo-rl\b", m.group(1)):
            raise AssertionError(f"installs tempo-rl from an index: {line.strip()}")


def test_first_screens_show_make_and_the_three_ways_in():
    first = "\n".join(README.splitlines()[:70])
    for needle in (
        "make demo",
        "make test",
        "tempo_advantages",
        "TempoGRPOTrainer",
        "adv_estimator=tempo",
        "examples/trl_tempo_grpo.py",
        "examples/verl_tempo_qwen3_1.7b.sh",
    ):
        assert needle in first, needle


def test_logging_libraries_are_opt_in_and_have_extras():
    from tempo_rl.trainer.config import TrainConfig

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert TrainConfig().loggers == []
    assert any(d.startswith("tensorboard") for d in extras["tensorboard"])
    assert any(d.startswith("wandb") for d in extras["wandb"])
    assert any(d.startswith("pydantic") for d in extras["train"])


def test_api_reference_documents_every_public_name():
    import tempo_rl

    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: (?:tempo_rl|reference\.stats)\.(\w+)$", api, flags=re.M))
    assert documented == set(tempo_rl.__all__) - {"__version__"}


def _python_blocks_and_outputs(text: str) -> list[tuple[str, str | None]]:
    """Each ```python block of `text`, with the ```text block right after it (its printed output), if any."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)
    out = []
    for i, (lang, code) in enumerate(blocks):
        if lang == "python":
            shown = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else None
            out.append((code, shown))
    return out


def test_readme_python_runs_and_prints_what_it_shows():
    blocks = _python_blocks_and_outputs(README)
    assert blocks, "the README shows a runnable example"
    for code, shown in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
        if shown is not None:
            assert printed.getvalue().strip() == shown.strip(), printed.getvalue()


def test_readme_engines_table_has_one_row_per_engine():
    header = "| Engine | how to switch it on | example |"
    assert header in README
    rows = README.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    engines = [row.split("|")[1].strip() for row in rows]
    assert {"TRL", "verl"} <= set(engines), engines


def test_own_loop_guide_runs_in_order_and_prints_what_it_shows():
    """docs/own-loop.md is one program: its blocks run in order in one namespace, and each prints the
    text block shown under it (prompts -> completions -> advantages -> loss -> optimizer step)."""
    blocks = _python_blocks_and_outputs((ROOT / "docs" / "own-loop.md").read_text())
    assert len(blocks) >= 5, "the guide shows the whole step"
    namespace: dict = {"__name__": "__own_loop__"}
    for code, shown in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "docs/own-loop.md", "exec"), namespace)
        if shown is not None:
            assert printed.getvalue().strip() == shown.strip(), printed.getvalue()
    assert namespace["model"].config._attn_implementation == "sdpa"  # what the page says: the model is unchanged


def test_quoted_make_demo_is_the_makefile_recipe():
    """The docs quote `make demo` as the `tempo-rl train` command it runs: the Makefile's, flag for flag."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t\$\(PY\) -m tempo_rl train (.*)$", makefile, flags=re.M)
    assert recipe, "the Makefile's demo target runs tempo-rl train"
    quoted = re.findall(
        r"make demo\s+# = tempo-rl train (.*)$", (ROOT / "docs" / "engines" / "train.md").read_text(), re.M
    )
    assert quoted == [recipe.group(1).strip()]


def test_docs_home_lists_every_way_in_of_the_readme():
    """The README's engines table and the one-call example are the ways in; the docs home names each."""
    header = "| Engine | how to switch it on | example |"
    rows = README.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    engines = [row.split("|")[1].strip() for row in rows]
    home = (ROOT / "docs" / "index.md").read_text()
    ways = home.split("## Ways in", 1)[1].split("\n## ", 1)[0]
    for name in ["tempo_advantages", *(e.split()[0].strip("`") for e in engines)]:
        assert name in ways, name
