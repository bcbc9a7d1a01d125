"""`tempo-rl inspect`: the files it writes, the numbers it shows, the errors it gives.

The page's numbers must be the library's: advantages from the public API, V and TD from the
reference trie. The page is loaded in headless Chromium (Debian's `chromium`, which
`make test-browser` installs; `make test` deselects these tests) over the DevTools protocol: it must log no error, request nothing but itself, and its
DOM must carry the same numbers as the embedded JSON and the API.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import tempo_rl
from tempo_rl.cli import main as cli_main
from tempo_rl.reference.example import example_group
from tempo_rl.reference.trie import PrefixTree
from tempo_rl.viz import RolloutError, Settings, build_views, load_tokenizer, read_rollouts
from tempo_rl.viz.browser import Browser, find_chromium
from tempo_rl.viz.page import render_html

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
WORKED = EXAMPLES / "worked_example.jsonl"
DUMP = EXAMPLES / "trainer_dump.jsonl"
TOKENIZER = EXAMPLES / "tokenizer.json"


def api_advantages(rollouts, settings: Settings = Settings()):
    """The public API on the file's rollouts, built here independently of tempo_rl.viz."""
    keys = {}
    group_ids = [keys.setdefault((r.step, r.group_id), len(keys)) for r in rollouts]
    width = max(len(r.ids) for r in rollouts)
    responses = torch.tensor([r.ids + [0] * (width - len(r.ids)) for r in rollouts])
    mask = torch.tensor([[1] * len(r.ids) + [0] * (width - len(r.ids)) for r in rollouts])
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)
    kw = dict(norm_by_std=settings.norm_by_std, eps=settings.eps, backend=settings.backend)
    tempo = tempo_rl.tempo_advantages(responses, mask, rewards, group_ids, td_coef=settings.td_coef, **kw)
    grpo = tempo_rl.grpo_advantages(responses, mask, rewards, group_ids, **kw)
    return (
        [tempo[i, : len(r.ids)].tolist() for i, r in enumerate(rollouts)],
        [grpo[i, : len(r.ids)].tolist() for i, r in enumerate(rollouts)],
    )


def flat_responses(views):
    return [r for v in views for r in v["responses"]]


# -- example files ---------------------------------------------------------------------------
def test_examples_are_what_the_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.build().items():
        assert (EXAMPLES / name).read_text(encoding="utf-8") == text, f"examples/{name} is stale"


def test_worked_example_file_is_the_reference_group():
    rollouts = read_rollouts(WORKED)
    sequences, rewards = example_group()
    # Whitespace ids are numbered by first appearance, not the reference's VOCAB: same tree.
    assert [r.reward for r in rollouts] == rewards
    assert [len(r.ids) for r in rollouts] == [len(s) for s in sequences]
    assert {r.group_id for r in rollouts} == {"worked-example"}


# -- what the views hold ---------------------------------------------------------------------
def test_worked_example_collapsed_tree():
    (view,) = build_views(read_rollouts(WORKED), Settings())
    labels = [n["label"] for n in view["nodes"]]
    assert labels == ["", "so", "x =", "5 </s>", "6 </s>", "y = 5 </s>", "</s>"]
    assert [n["count"] for n in view["nodes"]] == [4, 4, 2, 1, 1, 1, 1]
    assert [n["value_exact"] for n in view["nodes"]] == ["1/2", "1/2", "1/2", "1", "0", "1", "0"]
    assert [n["branch"] for n in view["nodes"]] == [False, True, True, False, False, False, False]
    assert [n["ends"] for n in view["nodes"]] == [[], [], [], [0], [1], [2], [3]]


@pytest.mark.parametrize("path", [WORKED, DUMP])
def test_views_hold_the_api_and_reference_numbers(path):
    rollouts = read_rollouts(path)
    settings = Settings()
    views = build_views(rollouts, settings)
    tempo, grpo = api_advantages(rollouts, settings)
    shown = flat_responses(views)
    order = [r for v in views for r in [x for x in rollouts if (x.step, x.group_id) == (v["step"], v["group_id"])]]
    for r, row in zip(order, shown):
        i = rollouts.index(r)
        assert row["tempo"] == tempo[i] and row["grpo"] == grpo[i]  # exact, not approximate
    for view in views:
        members = [r for r in rollouts if (r.step, r.group_id) == (view["step"], view["group_id"])]
        tree = PrefixTree([r.ids for r in members], [r.reward for r in members])
        for k, row in enumerate(view["responses"]):
            path_nodes = tree.path(k)
            assert row["td_exact"] == [str(Fraction(td)) for td in tree.td(k)]
            assert row["v_child"] == [float(n.value) for n in path_nodes[1:]]
            assert row["branch"] == tree.is_branch_token(k)


def test_worked_example_values_match_the_note():
    """proofs_notes/worked-example.md: '5' in y1 gets (1 - 1/2 + 1/2) / (sigma + eps)."""
    (view,) = build_views(read_rollouts(WORKED), Settings(backend="reference"))
    y1 = view["responses"][0]
    sigma = (1 / 3) ** 0.5
    assert y1["td_exact"] == ["0", "0", "0", "1/2", "0"]
    assert y1["tempo"][3] == pytest.approx(1.0 / (sigma + 1e-6), rel=1e-12)
    assert y1["tempo"][0] == y1["grpo"][0]  # non-branch token: exactly GRPO


def test_tokenizer_round_trip_and_text_input(tmp_path):
    tok = load_tokenizer(TOKENIZER)
    dump = read_rollouts(DUMP, tok)
    assert dump[0].pieces == dump[0].text.split()
    as_text = tmp_path / "text.jsonl"
    as_text.write_text(
        "".join(
            json.dumps({"group_id": r.group_id, "step": r.step, "response": r.text, "reward": r.reward}) + "\n"
            for r in dump
        )
    )
    assert [r.ids for r in read_rollouts(as_text, tok)] == [r.ids for r in dump]


def test_ids_without_tokenizer_show_as_ids():
    rollouts = read_rollouts(DUMP)
    assert rollouts[0].pieces == [f"#{t}" for t in rollouts[0].ids]


# -- bad input -------------------------------------------------------------------------------
GOOD = '{"group_id": 0, "response": [1, 2], "reward": 1.0}'


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"group_id": 0, "response": [1, 2], "reward": 1.0', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"group_id": 0, "reward": 1.0}', "missing field 'response'"),
        ('{"group_id": 0, "response": [1, 2]}', "missing field 'reward'"),
        ('{"response": [1, 2], "reward": 1.0}', "missing field 'group_id'"),
        ('{"group_id": 0, "response": [1, 2.5], "reward": 1.0}', "response must be"),
        ('{"group_id": 0, "response": [1, -2], "reward": 1.0}', "response must be"),
        ('{"group_id": 0, "response": [1, 2], "reward": NaN}', "reward must be a finite number"),
        ('{"group_id": 0, "response": [1, 2], "reward": "1"}', "reward must be a finite number"),
        ('{"group_id": [0], "response": [1, 2], "reward": 1.0}', "group_id must be"),
        ('{"group_id": 0, "response": [1, 2], "reward": 1.0, "step": "x"}', "step must be an integer"),
        ('{"group_id": 0, "response": "a b", "reward": 1.0}', "mix token ids"),
    ],
)
def test_bad_line_names_the_line(tmp_path, capsys, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{GOOD}\n{bad}\n{GOOD}\n")
    with pytest.raises(RolloutError, match=re.escape(f"{path}:4: ") + ".*" + re.escape(message)):
        read_rollouts(path)
    assert cli_main(["inspect", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "bad.jsonl:4: " in capsys.readouterr().err


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(RolloutError, match="no rollouts"):
        read_rollouts(path)


# -- the command -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, extra, pngs",
    [
        (WORKED, [], ["worked_example.png"]),
        (DUMP, [], ["trainer_dump.50-0.png", "trainer_dump.50-1.png", "trainer_dump.100-0.png"]),
        (DUMP, ["--tokenizer", str(TOKENIZER), "--group", "100:0"], ["trainer_dump.png"]),
    ],
)
def test_cli_writes_html_png_and_summary(tmp_path, capsys, path, extra, pngs):
    out = tmp_path / "out"
    assert cli_main(["inspect", str(path), "-o", str(out), *extra]) == 0
    html = (out / f"{path.stem}.html").read_text(encoding="utf-8")
    assert "<script" in html and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = capsys.readouterr().out
    assert "branch" in summary and "(root)" in summary and "wrote" in summary


# -- the page in a browser -------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    assert find_chromium(), "headless Chromium is missing: `make test-browser` installs Debian's chromium"
    with Browser() as b:
        yield b


DOM_NUMBERS = """
[...document.querySelectorAll("section.group")].map(sec => ({
  nodes: [...sec.querySelectorAll("g.node")].map(g => ({
    count: +g.dataset.count, value: +g.dataset.value, text: g.querySelector("text").textContent,
    branch: g.classList.contains("branch")})),
  rows: [...sec.querySelectorAll("tr.resp")].map(tr => ({
    tempo: [...tr.querySelectorAll('.tok[data-kind="tempo"]')].map(s => +s.dataset.adv),
    grpo: [...tr.querySelectorAll('.tok[data-kind="grpo"]')].map(s => +s.dataset.adv),
    td: [...tr.querySelectorAll('.tok[data-kind="tempo"]')].map(s => +s.dataset.td),
    text: [...tr.querySelectorAll('.tok[data-kind="tempo"]')].map(s => s.textContent)})),
}))
"""


def _render(tmp_path, source: Path, tokenizer=None, settings: Settings = Settings()):
    rollouts = read_rollouts(source, tokenizer)
    views = build_views(rollouts, settings)
    page = tmp_path / f"{source.stem}.html"
    page.write_text(render_html(views, settings, str(source)), encoding="utf-8")
    return rollouts, views, page


@pytest.mark.parametrize(
    "source, tokenizer, settings",
    [
        (WORKED, None, Settings()),
        (DUMP, TOKENIZER, Settings()),
        (DUMP, None, Settings(norm_by_std=False, td_coef=0.5)),
    ],
)
def test_page_renders_without_errors_and_shows_the_api_numbers(tmp_path, browser, source, tokenizer, settings):
    rollouts, views, page = _render(tmp_path, source, tokenizer and load_tokenizer(tokenizer), settings)
    report = browser.open(page)
    assert report.errors == []
    assert report.requests == [page.resolve().as_uri()]  # nothing fetched from anywhere else
    assert browser.evaluate("document.body.dataset.rendered") == "ok"
    embedded = browser.evaluate('JSON.parse(document.getElementById("tempo-data").textContent)')
    assert embedded["groups"] == json.loads(json.dumps(views))

    tempo, grpo = api_advantages(rollouts, settings)
    by_key = {}
    for i, r in enumerate(rollouts):
        by_key.setdefault((r.step, r.group_id), []).append(i)
    dom = browser.evaluate(DOM_NUMBERS)
    assert len(dom) == len(views)
    for view, sec in zip(views, dom):
        rows = by_key[(view["step"], view["group_id"])]
        for i, row, shown in zip(rows, view["responses"], sec["rows"]):
            assert shown["tempo"] == tempo[i] and shown["grpo"] == grpo[i]  # bitwise
            assert shown["td"] == row["td"]
            assert shown["text"] == rollouts[i].pieces
        for node, shown in zip(view["nodes"], sec["nodes"]):
            assert (shown["count"], shown["value"], shown["branch"]) == (node["count"], node["value"], node["branch"])
            assert f"n={node['count']} V={node['value_exact']}" in shown["text"]


def test_page_interactions(tmp_path, browser):
    _, views, page = _render(tmp_path, WORKED)
    assert browser.open(page).errors == []
    visible = """(kind) => [...document.querySelectorAll('.line.' + kind)]
                   .filter(e => getComputedStyle(e).display !== 'none').length"""
    assert browser.evaluate(f"({visible})('tempo')") == 4
    assert browser.evaluate(f"({visible})('grpo')") == 0
    browser.evaluate("document.querySelector('button[data-mode=\"both\"]').click()")
    assert browser.evaluate(f"({visible})('grpo')") == 4
    tip = browser.evaluate("""(() => {
        const tok = document.querySelectorAll('tr.resp')[0].querySelectorAll('.tok[data-kind="tempo"]')[3];
        const r = tok.getBoundingClientRect();
        tok.dispatchEvent(new MouseEvent('mousemove', {clientX: r.x + 2, clientY: r.y + 2, bubbles: true}));
        return document.getElementById('tip').textContent; })()""")
    assert "V(parent)1/2" in tip and "V(child)1" in tip and "TD1/2" in tip and "branch token" in tip
    lit = browser.evaluate("""(() => {
        document.querySelectorAll('tr.resp')[2].dispatchEvent(new MouseEvent('mouseenter'));
        return [...document.querySelectorAll('g.node.on')].map(g => +g.dataset.node); })()""")
    assert lit == [0, 1, 5]  # root, "so", "y = 5 </s>"
    assert browser.report().errors == []  # nor while clicking and hovering


def test_hostile_tokens_stay_text(tmp_path, browser):
    path = tmp_path / "hostile.jsonl"
    path.write_text(
        "".join(
            json.dumps({"group_id": "g", "response": text, "reward": reward}) + "\n"
            for text, reward in [
                ("</script><script>alert(1)</script> <!-- x", 1.0),
                ("<img src=x onerror=alert(2)> ok", 0.0),
            ]
        )
    )
    rollouts, _, page = _render(tmp_path, path)
    assert browser.open(page).errors == []
    assert browser.evaluate("document.body.dataset.rendered") == "ok"
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    shown = browser.evaluate("[...document.querySelectorAll('.tok[data-kind=\"tempo\"]')].map(s => s.textContent)")
    assert shown == [p for r in rollouts for p in r.pieces]


def test_transformers_tokenizer_directory(tmp_path):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER)).save_pretrained(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert [r.pieces for r in read_rollouts(DUMP, tok)] == [r.text.split() for r in read_rollouts(DUMP)]


# -- real rewards, long labels, token text that looks like TeX -------------------------------
REAL = [  # rewards such as a grader's 0.8 / 0.6 (binary fractions with 53-bit denominators), long runs
    ("the answer is $x^2$ so $", 0.8),
    ("the answer is $x^2$ so we check every case one by one before we write it down", 0.6),
    ("the answer is \\frac{1}{2} $$ and then a rather long explanation follows here", 0.1),
    ("no $\\unknownmacro{3}$ here", 0.3),
]


def _write(tmp_path, rows, name="real.jsonl"):
    path = tmp_path / name
    path.write_text(
        "".join(json.dumps({"group_id": 0, "response": t, "reward": r, "prompt": "Solve $x$."}) + "\n" for t, r in rows)
    )
    return path


def test_values_of_real_rewards_are_short_decimals(tmp_path):
    views = build_views(read_rollouts(_write(tmp_path, REAL)), Settings())
    shown = [n["value_exact"] for n in views[0]["nodes"]] + [t for r in views[0]["responses"] for t in r["td_exact"]]
    assert all(len(s) <= 12 for s in shown), shown
    assert views[0]["nodes"][0]["value_exact"] == "0.45"  # the root: mean of 0.8, 0.6, 0.1, 0.3
    assert "1/2" in [n["value_exact"] for n in build_views(read_rollouts(WORKED), Settings())[0]["nodes"]]


def test_png_of_tex_like_tokens_renders_unclipped(tmp_path):
    """`$` in token text is text, not mathtext; the canvas holds every label and the title."""
    from PIL import Image

    from tempo_rl.viz.figure import draw_tree_png

    view = build_views(read_rollouts(_write(tmp_path, REAL)), Settings())[0]
    png = draw_tree_png(view, tmp_path / "real.png")
    img = Image.open(png).convert("L")
    w, h = img.size
    border = [img.getpixel((x, y)) for x in range(w) for y in (0, 1, h - 2, h - 1)]
    border += [img.getpixel((x, y)) for y in range(h) for x in (0, 1, w - 2, w - 1)]
    assert min(border) >= 250, "something is drawn on the edge of the image: clipped"


def test_page_labels_fit_and_carry_the_full_text(tmp_path, browser):
    _, views, page = _render(tmp_path, _write(tmp_path, REAL))
    assert browser.open(page, width=900).errors == []
    fit = browser.evaluate("""[...document.querySelectorAll('.tree')].map(box => {
        const w = Math.min(box.getBoundingClientRect().right, box.querySelector('svg').getBoundingClientRect().right);
        return [...box.querySelectorAll('text')].every(t => t.getBoundingClientRect().right <= w + 0.5); })""")
    assert fit == [True]
    titles = browser.evaluate("[...document.querySelectorAll('text.edgelabel title')].map(t => t.textContent)")
    assert any(t.endswith("rather long explanation follows here") for t in titles)
    assert "prompt: Solve $x$." in browser.evaluate("document.body.innerText")
    assert "3602879701896397" not in browser.evaluate("document.body.innerText")


def test_every_dumped_group_is_shown_with_its_prompt(tmp_path):
    """The trainer's dump holds every group of a step, each line with its prompt."""
    path = tmp_path / "rollouts.jsonl"
    rows = [
        {"step": 5, "group_id": g, "prompt": f"{g}+{g}=", "response": [1, 2 + k, 3], "text": "", "reward": k}
        for g in range(3)
        for k in range(2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    views = build_views(read_rollouts(path), Settings())
    assert [(v["step"], v["group_id"]) for v in views] == [(5, 0), (5, 1), (5, 2)]
    assert [v["responses"][0]["prompt"] for v in views] == ["0+0=", "1+1=", "2+2="]


@pytest.mark.browser  # starts Chromium itself, without the browser fixture
def test_browser_starts_after_matplotlib_has_drawn(tmp_path):
    """matplotlib holds font files open at low descriptors; starting Chromium must not depend on them."""
    import subprocess
    import sys

    script = (
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(); ax.set_title('x'); fig.savefig(%r); plt.close(fig)\n"
        "from tempo_rl.viz.browser import Browser\n"
        "with Browser() as b: print(b.evaluate('1 + 1'))\n"
    ) % str(tmp_path / "x.png")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-1500:]


def test_rewards_near_float64s_limit_give_finite_views(tmp_path, capsys):
    """Rewards of +-1e300: the advantages are finite (the library scales by a power of two), so the
    group's summary must be too, though its variance (~1e600) is past float64."""
    path = tmp_path / "huge.jsonl"
    rows = [([1, 2, 3], 1e300), ([1, 2, 4], -1e300), ([1, 5], 0.0)]
    path.write_text("".join(json.dumps({"group_id": 0, "response": t, "reward": r}) + "\n" for t, r in rows))
    views = build_views(read_rollouts(path), Settings())
    assert views[0]["std"] == pytest.approx(1e300, rel=1e-15)
    tempo, _ = api_advantages(read_rollouts(path))
    assert [a for r in views[0]["responses"] for a in r["tempo"]] == [a for row in tempo for a in row]
    # sigma itself past float64: the summary says so, the page's JSON (no inf allowed) is written
    path.write_text(
        "".join(
            json.dumps({"group_id": 0, "response": [1, t], "reward": r}) + "\n"
            for t, r in [(2, 1.5e308), (3, -1.5e308)]
        )
    )
    huge = build_views(read_rollouts(path), Settings())
    assert huge[0]["std"] is None
    assert cli_main(["inspect", str(path), "-o", str(tmp_path / "out"), "--no-png"]) == 0
    assert "std past float64" in capsys.readouterr().out
    page = (tmp_path / "out" / "huge.html").read_text()
    assert json.loads(re.search(r'id="tempo-data">(.*?)</script>', page, re.S).group(1))
