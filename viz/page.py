"""The self-contained HTML page: one file, inline CSS and JavaScript, no network requests.

The page embeds the views of `credit.py` as JSON (`<script id="tempo-data">`) and draws from
them: for each group the collapsed prefix tree (SVG; V(s) and member count at each node, branch
nodes ringed) and each response's tokens coloured by advantage, TEMPO, GRPO or both side by
side; hovering a token shows V(parent), V(child), TD and both advantages, and hovering a
response lights its path in the tree. Each token span carries its numbers as data attributes,
so a test can read back what the page shows.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .credit import Settings

_CSS = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --branch: #e08214; --bg: #ffffff; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--ink); background: var(--bg); margin: 0; padding: 24px 32px 48px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 2px; }
.sub { color: var(--muted); font-size: 13px; }
.legend { display: flex; gap: 18px; align-items: center; margin: 10px 0 18px; font-size: 12px; color: var(--muted); flex-wrap: wrap; }
.ramp { display: inline-block; width: 140px; height: 10px; border-radius: 2px; vertical-align: middle;
        background: linear-gradient(90deg, #b2182b, #ef8a62, #f7f7f7, #67a9cf, #2166ac); margin: 0 4px; }
.ring { display: inline-block; width: 12px; height: 12px; border-radius: 50%; border: 3px solid var(--branch); vertical-align: middle; }
section.group { border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; margin: 0 0 22px; }
.tree { overflow-x: auto; margin: 8px 0 12px; }
.tree svg { max-width: 100%; height: auto; }  /* a wide tree shrinks to the page: every label stays in view */
.tree svg { display: block; }
.tree text { font: 12px "DejaVu Sans Mono", Menlo, Consolas, monospace; fill: var(--ink); }
.tree text.stat { font-size: 11px; fill: var(--muted); }
.tree text.leaf { font-size: 11.5px; }
.tree path.edge { fill: none; stroke: #8c959f; stroke-width: 1.5; }
.tree circle { stroke: #57606a; stroke-width: 1; }
.tree g.node.branch circle { stroke: var(--branch); stroke-width: 3.5; }
.tree.lit path.edge, .tree.lit g.node, .tree.lit text.edgelabel { opacity: 0.25; }
.tree.lit path.edge.on, .tree.lit g.node.on, .tree.lit text.edgelabel.on { opacity: 1; }
.tree.lit path.edge.on { stroke: var(--ink); stroke-width: 2.5; }
.modes { display: inline-flex; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; margin: 4px 0 10px; }
.modes button { font: inherit; font-size: 12px; border: 0; background: #f6f8fa; padding: 4px 12px; cursor: pointer; color: var(--ink); }
.modes button + button { border-left: 1px solid var(--line); }
.modes button.on { background: var(--ink); color: #fff; }
table.resp { border-collapse: collapse; width: 100%; }
table.resp td { padding: 5px 6px; vertical-align: top; border-top: 1px solid #eaeef2; }
table.resp td.who { white-space: nowrap; font: 12px "DejaVu Sans Mono", Menlo, Consolas, monospace; color: var(--muted); width: 1%; }
table.resp td.who b { color: var(--ink); }
tr.resp:hover td { background: #f6f8fa; }
.line { display: flex; flex-wrap: wrap; gap: 2px; align-items: baseline; margin: 1px 0; }
.line .tag { font-size: 10.5px; color: var(--muted); width: 48px; flex: none; }
.tok { font: 13px "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre; padding: 1px 3px;
       border-radius: 3px; cursor: default; border-bottom: 2px solid transparent; }
.tok.branch { border-bottom-color: var(--branch); }
.tok:hover, .tok.hot { outline: 2px solid var(--ink); }
.group.mode-tempo .line.grpo, .group.mode-grpo .line.tempo { display: none; }
.group.mode-tempo .line .tag, .group.mode-grpo .line .tag { display: none; }
.text { color: var(--muted); font-size: 12px; margin-top: 2px; white-space: pre-wrap; }
#tip { position: fixed; pointer-events: none; background: #1f2328; color: #fff; font: 12px/1.5 "DejaVu Sans Mono", Menlo, monospace;
       padding: 8px 10px; border-radius: 6px; display: none; z-index: 10; box-shadow: 0 4px 14px rgba(0,0,0,.25); }
#tip td { padding: 0 6px 0 0; } #tip td.v { text-align: right; } #tip .h { color: #ffd8a8; }
"""

_JS = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("tempo-data").textContent);
const SVGNS = "http://www.w3.org/2000/svg";
const ROW = 46, PAD = 26, CHAR = 7.3;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(x) { return (x >= 0 ? "+" : "") + x.toFixed(4); }  // signed: TD, advantages
function num(x) { return String(Number(x.toPrecision(6))); }  // 0.1 + 0.2 shows as 0.3
function rewardsText(group, n) { return [...new Set(n.ends.map(k => num(group.rewards[k])))].join("/"); }
function mix(a, b, t) { return a.map((v, i) => Math.round(v + (b[i] - v) * t)); }
const RED = [178, 24, 43], LIGHT = [247, 247, 247], BLUE = [33, 102, 172];
function diverging(t) {  // t in [-1, 1]: red (blame) .. light .. blue (credit)
  t = Math.max(-1, Math.min(1, t));
  const c = t < 0 ? mix(LIGHT, RED, -t) : mix(LIGHT, BLUE, t);
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
function inkOn(t) { return Math.abs(t) > 0.6 ? "#fff" : "#1f2328"; }

function drawTree(group, box) {
  const nodes = group.nodes;
  const lo = Math.min(...group.rewards), hi = Math.max(...group.rewards);
  const levels = Math.max(...nodes.map(n => n.level)) + 1;
  const colW = new Array(levels).fill(0);
  for (const n of nodes) colW[n.level] = Math.max(colW[n.level], n.label.length * CHAR + 34, 96);
  const x = [PAD + 40];  // room for the root's label
  for (let l = 1; l < levels; l++) x.push(x[l - 1] + colW[l]);
  const leafText = n => `${n.ends.map(k => `y${k + 1}`).join(",")}  R=${rewardsText(group, n)}  ` +
                         `n=${n.count} V=${n.value_exact}`;
  const leafW = Math.max(190, ...nodes.filter(n => n.ends.length).map(n => leafText(n).length * CHAR + 30));
  const rows = Math.max(...nodes.map(n => n.row)) + 1;
  const W = x[levels - 1] + leafW, H = (rows - 1) * ROW + 2 * PAD + 24;
  const root = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`});
  const px = n => x[n.level], py = n => PAD + 6 + n.row * ROW;
  for (const n of nodes) {
    if (n.parent === null) continue;
    const p = nodes[n.parent], x0 = px(p), y0 = py(p), x1 = px(n), y1 = py(n), xm = x0 + 14;
    const bend = y1 > y0 ? 8 : -8;  // an elbow: out of the parent, down (or up), into the child
    const d = y0 === y1 ? `M${x0},${y0} L${x1},${y1}`
      : `M${x0},${y0} L${xm},${y0} L${xm},${y1 - bend} Q${xm},${y1} ${xm + 8},${y1} L${x1},${y1}`;
    root.appendChild(svg("path", {class: "edge", "data-node": n.id, d}));
    const label = svg("text", {x: xm + 14, y: y1 - 6, class: "edgelabel", "data-node": n.id}, n.label);
    label.appendChild(svg("title", {}, n.full_label));  // the whole run of tokens when the label is cut
    root.appendChild(label);
  }
  for (const n of nodes) {
    const g = svg("g", {class: "node" + (n.branch ? " branch" : ""), "data-node": n.id,
                        "data-count": n.count, "data-value": String(n.value)});
    const t = hi > lo ? 2 * (n.value - lo) / (hi - lo) - 1 : 0;
    g.appendChild(svg("circle", {cx: px(n), cy: py(n), r: n.branch ? 8 : 6.5, fill: diverging(t)}));
    const stat = `n=${n.count} V=${n.value_exact}`;
    const leaf = n.ends.length && !nodes.some(m => m.parent === n.id);
    if (leaf) {
      g.appendChild(svg("text", {x: px(n) + 13, y: py(n) + 4, class: "leaf stat"}, leafText(n)));
    } else {
      // Under the incoming edge, clear of the outgoing ones (they leave to the right).
      g.appendChild(svg("text", {x: px(n) + 6, y: py(n) + 20, "text-anchor": "end", class: "stat"}, stat));
      if (n.ends.length)
        g.appendChild(svg("text", {x: px(n) + 6, y: py(n) + 32, "text-anchor": "end", class: "stat"},
                          "ends: " + n.ends.map(k => `y${k + 1}`).join(",")));
    }
    const title = svg("title", {}, `${n.branch ? "branch node (" + n.ways + " ways)" : "node"}, ` +
                  `depth ${n.depth}: ${n.count} members, V = ${n.value_exact} = ${n.value}`);
    g.appendChild(title);
    root.appendChild(g);
  }
  box.appendChild(root);
}

const tip = el("div", {id: "tip"});
function showTip(ev, group, r, t) {
  const nodes = group.nodes;
  const child = nodes[r.node[t]], parent = t === 0 ? nodes[0] : nodes[r.node[t - 1]];
  const rows = [
    ["V(parent)", parent.value_exact, r.v_parent[t].toFixed(4)],
    ["V(child)", child.value_exact, r.v_child[t].toFixed(4)],
    ["TD", r.td_exact[t], fmt(r.td[t])],
    ["A tempo", "", fmt(r.tempo[t])],
    ["A grpo", "", fmt(r.grpo[t])],
  ];
  tip.innerHTML = "";
  tip.appendChild(el("div", {class: "h"}, `y${r.index + 1} t=${t} ${JSON.stringify(r.tokens[t])} (id ${r.ids[t]})`));
  const table = el("table");
  for (const [name, exact, value] of rows) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, name));
    tr.appendChild(el("td", {class: "v"}, exact));
    tr.appendChild(el("td", {class: "v"}, value));
    table.appendChild(tr);
  }
  tip.appendChild(table);
  tip.appendChild(el("div", {}, r.branch[t] ? "branch token: the group splits here"
                                            : "non-branch token: TD = 0, TEMPO = GRPO"));
  tip.style.display = "block";
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - w - 8) + "px";
  tip.style.top = (ev.clientY + 18 + h > window.innerHeight ? ev.clientY - h - 10 : ev.clientY + 18) + "px";
}

function tokenLine(group, r, kind, scale) {
  const line = el("div", {class: "line " + kind});
  line.appendChild(el("span", {class: "tag"}, kind === "tempo" ? "TEMPO" : "GRPO"));
  r.tokens.forEach((piece, t) => {
    const a = r[kind][t], s = scale > 0 ? a / scale : 0;
    const span = el("span", {
      class: "tok" + (r.branch[t] ? " branch" : ""), "data-kind": kind, "data-t": t,
      "data-adv": String(a), "data-td": String(r.td[t]),
      "data-v-parent": String(r.v_parent[t]), "data-v-child": String(r.v_child[t]),
    }, piece.replace(/\n/g, "\u21b5"));
    span.style.background = diverging(s);
    span.style.color = inkOn(s);
    span.addEventListener("mousemove", ev => { span.classList.add("hot"); showTip(ev, group, r, t); });
    span.addEventListener("mouseleave", () => { span.classList.remove("hot"); tip.style.display = "none"; });
    line.appendChild(span);
  });
  return line;
}

function lightPath(treeBox, r, on) {
  treeBox.classList.toggle("lit", on);
  const ids = new Set([0, ...r.node]);
  treeBox.querySelectorAll("[data-node]").forEach(e => e.classList.toggle("on", on && ids.has(+e.dataset.node)));
}

function drawGroup(group, gi) {
  const sec = el("section", {class: "group mode-tempo", id: `group-${gi}`});
  const title = (group.step === null ? "" : `step ${group.step}, `) + `group ${group.group_id}`;
  sec.appendChild(el("h2", {}, title));
  const branchNodes = group.nodes.filter(n => n.branch).length;
  const tokens = group.responses.reduce((s, r) => s + r.tokens.length, 0);
  const branchTokens = group.responses.reduce((s, r) => s + r.branch.filter(b => b).length, 0);
  sec.appendChild(el("div", {class: "sub"},
    `G = ${group.size} responses, mean reward ${group.mean.toFixed(4)}, std ${group.std === null ? 'past float64' : group.std.toFixed(4)}; ` +
    `${group.nodes.length} drawn nodes, ${branchNodes} branch nodes; ` +
    `${branchTokens} of ${tokens} tokens are branch tokens (TEMPO differs from GRPO only there)`));
  const prompt = group.responses.find(r => r.prompt);
  if (prompt) sec.appendChild(el("div", {class: "text"}, "prompt: " + prompt.prompt));
  const treeBox = el("div", {class: "tree"});
  drawTree(group, treeBox);
  sec.appendChild(treeBox);
  const modes = el("div", {class: "modes"});
  for (const [mode, label] of [["tempo", "TEMPO"], ["grpo", "GRPO"], ["both", "side by side"]]) {
    const b = el("button", {type: "button", "data-mode": mode, class: mode === "tempo" ? "on" : ""}, label);
    b.addEventListener("click", () => {
      sec.classList.remove("mode-tempo", "mode-grpo", "mode-both");
      sec.classList.add("mode-" + mode);
      modes.querySelectorAll("button").forEach(x => x.classList.toggle("on", x === b));
    });
    modes.appendChild(b);
  }
  sec.appendChild(modes);
  const scale = Math.max(0, ...group.responses.flatMap(r => r.tempo.concat(r.grpo).map(Math.abs)));
  const table = el("table", {class: "resp"});
  for (const r of group.responses) {
    const tr = el("tr", {class: "resp", "data-index": r.index});
    const who = el("td", {class: "who"});
    who.appendChild(el("b", {}, `y${r.index + 1}`));
    who.appendChild(document.createTextNode(` R=${r.reward}`));
    who.appendChild(el("br"));
    who.appendChild(document.createTextNode(`line ${r.line}`));
    tr.appendChild(who);
    const body = el("td");
    body.appendChild(tokenLine(group, r, "tempo", scale));
    body.appendChild(tokenLine(group, r, "grpo", scale));
    if (r.text !== null && r.text !== r.tokens.join(" ")) body.appendChild(el("div", {class: "text"}, r.text));
    tr.appendChild(body);
    tr.addEventListener("mouseenter", () => lightPath(treeBox, r, true));
    tr.addEventListener("mouseleave", () => lightPath(treeBox, r, false));
    table.appendChild(tr);
  }
  sec.appendChild(table);
  return sec;
}

function main() {
  const app = document.getElementById("app");
  DATA.groups.forEach((g, gi) => app.appendChild(drawGroup(g, gi)));
  document.body.appendChild(tip);
  document.body.dataset.rendered = "ok";
}
main();
"""

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
<div class="sub">{subtitle}</div>
<div class="legend">
  <span>advantage: blame<span class="ramp"></span>credit (one scale per group, shared by TEMPO and GRPO)</span>
  <span><span class="ring"></span> branch node / <u style="text-decoration-color:#e08214">branch token</u></span>
  <span>node colour: V(s) from the group's lowest to highest reward</span>
  <span>hover a token for V(parent), V(child), TD, advantages; hover a response to light its path</span>
</div>
<div id="app"></div>
<script type="application/json" id="tempo-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def page_data(views: list[dict[str, Any]], settings: Settings, source: str) -> dict[str, Any]:
    return {"source": source, "settings": vars(settings), "groups": views}


def render_html(views: list[dict[str, Any]], settings: Settings, source: str) -> str:
    """The whole page as one string."""
    data = json.dumps(page_data(views, settings, source), ensure_ascii=False, allow_nan=False)
    data = data.replace("<", "\\u003c")  # no "</script>" or "<!--" from a token can end the block
    norm = f"/ (std + {settings.eps:g})" if settings.norm_by_std else "unnormalised (Dr. GRPO form)"
    td = "TD" if settings.td_coef == 1 else f"{settings.td_coef:g} * TD"
    subtitle = (
        f"{len(views)} group(s) from {source}; A = (R - mean + {td}) {norm}; "
        f"backend {settings.backend}; TD = V(child) - V(parent) from the exact prefix tree"
    )
    return _HTML.format(
        title=html.escape(f"TEMPO credit: {Path(source).name}"),
        subtitle=html.escape(subtitle),
        css=_CSS,
        js=_JS,
        data=data,
    )


def write_html(path: str | Path, views: list[dict[str, Any]], settings: Settings, source: str) -> Path:
    path = Path(path)
    path.write_text(render_html(views, settings, source), encoding="utf-8")
    return path
