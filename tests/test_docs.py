"""What a user reads first: the README's links resolve inside the repository, the license is there and
matches the package metadata, install commands install from source, and the defaults the docs
describe are the code's."""

from __future__ import annotations

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


def test_first_screen_shows_make_and_the_three_ways_in():
    first = "\n".join(README.splitlines()[:30])
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
