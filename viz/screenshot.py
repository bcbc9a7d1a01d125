"""The screenshot of docs/inspect.md: the worked example's page, TEMPO and GRPO side by side, one token hovered.

.venv/bin/python -m tempo_rl.viz.screenshot [docs/inspect.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .browser import Browser
from .credit import Settings, build_views
from .page import write_html
from .rollouts import read_rollouts

ROOT = Path(__file__).resolve().parents[1]

HOVER = """(() => {
  document.querySelector('button[data-mode="both"]').click();
  const tok = document.querySelectorAll('tr.resp')[1].querySelectorAll('.tok[data-kind="tempo"]')[3];
  const r = tok.getBoundingClientRect();
  // The pointer sits on the token; the tooltip is placed to the right so no token hides under it.
  tok.dispatchEvent(new MouseEvent('mousemove', {clientX: r.right + 150, clientY: r.top - 70, bubbles: true}));
  document.querySelectorAll('tr.resp')[1].dispatchEvent(new MouseEvent('mouseenter'));
  return Math.ceil(document.querySelector('section.group').getBoundingClientRect().bottom + 24);
})()"""


def screenshot(out: Path, source: Path = ROOT / "examples" / "worked_example.jsonl", width: int = 1000) -> Path:
    settings = Settings()
    views = build_views(read_rollouts(source), settings)
    with tempfile.TemporaryDirectory() as tmp, Browser() as browser:
        page = write_html(Path(tmp) / "page.html", views, settings, f"examples/{source.name}")
        report = browser.open(page, width=width, height=1200)
        if report.errors:
            raise RuntimeError(f"the page logged errors: {report.errors}")
        height = browser.evaluate(HOVER)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": False},
        )
        browser.evaluate(HOVER)  # hover again at the new size so the tooltip stays on its token
        return browser.screenshot(out, full_page=False)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "inspect.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    print(screenshot(target))
