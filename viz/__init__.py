"""See the credit: the prefix tree of a group of responses and TEMPO's per-token advantages.

`tempo-rl inspect FILE.jsonl -o out/` reads rollouts (`rollouts.py`), computes what to show from
the reference trie and the public API (`credit.py`), and writes a self-contained HTML page
(`page.py`), a PNG of each tree (`figure.py`) and a text summary (`summary.py`). `browser.py`
drives headless Chromium to check and screenshot the page.
"""

from .credit import Settings, build_views
from .rollouts import RolloutError, load_tokenizer, read_rollouts

__all__ = ["RolloutError", "Settings", "build_views", "load_tokenizer", "read_rollouts"]
