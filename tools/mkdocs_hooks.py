"""mkdocs hook: the site's pages include proofs_notes/ and benchmarks/results/ where they live.

The notes and the measured results stay the single source in the repository; the hook adds them to
the site's files at build time (same relative paths), so nothing is copied by hand and a link from a
page in docs/ to `proofs_notes/tempo.md` or `benchmarks/results/compare_demo.png` resolves.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
# (folder inside the repository, file suffixes it contributes to the site)
INCLUDED = (
    ("proofs_notes", (".md",)),
    ("benchmarks/results", (".md", ".png")),
)


def on_files(files: Files, config) -> Files:
    for folder, suffixes in INCLUDED:
        for path in sorted((ROOT / folder).iterdir()):
            if path.suffix in suffixes:
                rel = path.relative_to(ROOT).as_posix()
                files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
