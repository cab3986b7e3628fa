"""Numbers from ../shared/data/MANIFEST.md, so the real-data tests check counts against the
manifest rather than against numbers typed into the tests."""

import re
from pathlib import Path


def manifest_row(data_dir: Path, folder: str) -> str:
    """The `rows` cell of MANIFEST.md's table for the data set in `folder`."""
    for line in (data_dir / "MANIFEST.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[2] == f"{folder}/":
            return cells[4]
    raise AssertionError(f"MANIFEST.md has no row for {folder}/")


def numbers(text: str) -> list[int]:
    """The whole numbers written in `text`, thousands separators allowed ("4,672" is 4672)."""
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]
