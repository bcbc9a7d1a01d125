"""A missing optional package is one line naming it and the install that works from a clone
(`pip install -e '.[extra]'`), wherever it is imported. Missing packages are simulated by putting
None in sys.modules, which makes `import name` fail as if it were not installed."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from tempo_rl import cli, extras

ROOT = Path(__file__).resolve().parent.parent


def _hide(monkeypatch, *names: str) -> None:
    """Make `import name` (and its submodules) fail as if the package were not installed."""
    for name in names:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, key)
        monkeypatch.setitem(sys.modules, name, None)


def _fresh_import(monkeypatch, module: str):
    for key in [k for k in sys.modules if k == module]:
        monkeypatch.delitem(sys.modules, key)
    return importlib.import_module(module)


def _one_line_hint(message: str, package: str, extra: str) -> None:
    assert "\n" not in message, message
    assert repr(package) in message and message.endswith(f"pip install -e '.[{extra}]'"), message


@pytest.mark.parametrize(
    "module, hidden, package, extra",
    [
        ("tempo_rl.integrations.trl", ("accelerate", "trl"), "trl", "trl"),
        ("tempo_rl.integrations.verl", ("verl",), "verl", "verl"),
        ("tempo_rl.testing", ("hypothesis",), "hypothesis", "testing"),
    ],
)
def test_importing_without_the_extra_names_the_package_and_the_install(monkeypatch, module, hidden, package, extra):
    _hide(monkeypatch, *hidden)
    with pytest.raises(ModuleNotFoundError) as raised:
        _fresh_import(monkeypatch, module)
    assert isinstance(raised.value, extras.MissingExtra) and raised.value.name == package
    _one_line_hint(str(raised.value), package, extra)
    e = raised.value  # no raw ModuleNotFoundError chained under it
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


def test_a_dependency_missing_inside_an_installed_package_is_named_itself(monkeypatch):
    _hide(monkeypatch, "some_dependency_of_trl")
    with pytest.raises(extras.MissingExtra) as raised, extras.requires("trl", "tempo_rl.integrations.trl"):
        import some_dependency_of_trl  # noqa: F401
    _one_line_hint(str(raised.value), "some_dependency_of_trl", "trl")


def test_require_checks_without_importing(monkeypatch):
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(extras.MissingExtra) as raised:
        extras.require(("json", "matplotlib"), "the bench plot")
    _one_line_hint(str(raised.value), "matplotlib", "viz")
    extras.require(("json",), "nothing optional")


def test_a_module_made_in_memory_counts_as_installed(monkeypatch):
    """Stand-ins built with types.ModuleType (no __spec__) are present, as an import would find them."""
    import types

    monkeypatch.setitem(sys.modules, "an_engine_stand_in", types.ModuleType("an_engine_stand_in"))
    extras.require(("an_engine_stand_in",), "a test")


@pytest.mark.parametrize(
    "argv, package, extra",
    [
        (["bench", "--quick", "--shape", "8x4x8"], "matplotlib", "viz"),
        (["bench", "--op", "tree_forward", "--tree-layers", "1"], "transformers", "train"),
        (["train", "--config", "c.yaml"], "pyyaml", "train"),
        (
            ["inspect", "-o", "o", "--no-png", str(ROOT / "examples" / "worked_example.jsonl"), "--tokenizer", "."],
            "transformers",
            "train",
        ),
        (["inspect", str(ROOT / "examples" / "worked_example.jsonl")], "matplotlib", "viz"),
    ],
)
def test_cli_without_an_extra_is_one_line_before_any_work(monkeypatch, tmp_path, capsys, argv, package, extra):
    monkeypatch.chdir(tmp_path)
    _hide(monkeypatch, {"pyyaml": "yaml"}.get(package, package))
    if argv[:2] == ["train", "--config"]:
        (tmp_path / "c.yaml").write_text("steps: 1\n")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    _one_line_hint(err.removesuffix(" (or pass --no-png)"), package, extra)
    assert not [p for p in tmp_path.iterdir() if p.name != "c.yaml"]  # refused before anything was written


def test_triton_backend_without_triton_names_the_extra(monkeypatch, tmp_path, capsys):
    from tempo_rl import backends

    _hide(monkeypatch, "triton")
    import tempo_rl.fast

    for key in [k for k in sys.modules if k.startswith("tempo_rl.fast.") and "triton" in k]:
        monkeypatch.delitem(sys.modules, key)
        monkeypatch.delattr(tempo_rl.fast, key.rsplit(".", 1)[1], raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends._try_load.cache_clear()
    try:
        with pytest.raises(RuntimeError) as raised:
            backends.get_backend("triton")
        assert "'triton'" in str(raised.value) and "pip install -e '.[triton]'" in str(raised.value)
    finally:
        backends._try_load.cache_clear()


def test_no_install_hint_names_an_index_package():
    """`pip install 'tempo-rl[x]'` resolves nowhere: tempo-rl installs from its repository."""
    pattern = re.compile(r"tempo-rl\[")
    for folder in ("tempo_rl", "reference", "fast", "trainer", "integrations", "benchmarks", "viz", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".sh", ".yaml") and pattern.search(path.read_text()):
                raise AssertionError(f"{path.relative_to(ROOT)} names 'tempo-rl[...]'; use pip install -e '.[...]'")
    assert not pattern.search((ROOT / "README.md").read_text())
