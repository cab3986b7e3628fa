"""What the recipes' tests share (test_recipes, test_prepare, test_skeleton, test_squad): a
command run in this process, and a few labelled sentences written as train and dev files."""

from pathlib import Path

from minift.run.cli import main

SENTENCES = [("a gripping , beautifully acted film", "1"), ("dull , lifeless and far too long", "0"),
             ("funny , warm and wise", "1"), ("i wanted my two hours back", "0")] * 4


def sentence_files(folder: Path) -> tuple[Path, Path]:
    """``train.tsv`` (the 16 sentences) and ``dev.tsv`` (the first 4) in ``folder``."""
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    for path, rows in ((train, SENTENCES), (dev, SENTENCES[:4])):
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return train, dev


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
