"""mkdocs hook: the benchmark figures of bench/figures served at figures/ in the site, so that a
page links `../figures/NAME.png` without a second copy of each image in docs/."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

BENCH = Path(__file__).resolve().parent.parent / "bench"


def on_files(files, config, **kwargs):
    for png in sorted((BENCH / "figures").glob("*.png")):
        files.append(File(f"figures/{png.name}", str(BENCH), config["site_dir"], config["use_directory_urls"]))
    return files
