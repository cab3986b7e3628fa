"""Shrink one figure of each lesson into lessons/thumbnails/NN.png, the pictures of README.md.

Run the lessons first (quick mode is enough: `MINIFT_QUICK=1 python lessons/01_encoder.py`, and so
on, one at a time), so that lessons/figures/NN/ holds their figures, then:

    python lessons/make_thumbnails.py          # every lesson's thumbnail
    python lessons/make_thumbnails.py 02 07    # only these lessons' (the others' figures unread)

It needs Pillow, which matplotlib installs. A thumbnail is at most 480 x 300 pixels (wide enough
for its labels to be read) and, as a palette PNG, a few tens of kilobytes; the script refuses to
write one over MAX_BYTES. The slow lesson tests fail when a thumbnail no longer matches the figure
its lesson draws: rerun this script after changing a lesson's figures.
"""

import io
import sys
from pathlib import Path

from PIL import Image

LESSONS = Path(__file__).resolve().parent
FIGURES = LESSONS / "figures"
THUMBNAILS = LESSONS / "thumbnails"
SIZE = (480, 300)  # the largest width and height; the aspect ratio is kept
MAX_BYTES = 120_000
# The figure of each lesson that shows where it goes.
CHOSEN = {
    "01": "attention_heads.png",
    "02": "loss_curves.png",
    "03": "freezing.png",
    "04": "subword_labels.png",
    "05": "masking_map.png",
    "06": "embeddings_before_after.png",
    "07": "padding.png",
    "08": "gradient_agreement.png",
    "09": "windows.png",
    "10": "benchmark_search.png",
    "11": "segment_ids.png",
    "12": "perplexity.png",
    "13": "cross_attention.png",
}


def thumbnail(source: Path) -> bytes:
    """``source`` shrunk to fit SIZE, as a 128-colour palette PNG."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail(SIZE, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.quantize(colors=128).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main(numbers: list[str]) -> int:
    unknown = sorted(set(numbers) - set(CHOSEN))
    if unknown:
        print(f"no lesson numbered {', '.join(unknown)}; lessons: {', '.join(CHOSEN)}",
              file=sys.stderr)
        return 1
    chosen = {n: name for n, name in CHOSEN.items() if not numbers or n in numbers}
    missing = [f"{FIGURES / n / name}" for n, name in chosen.items()
               if not (FIGURES / n / name).is_file()]
    if missing:
        print("run the lessons first; missing:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    THUMBNAILS.mkdir(exist_ok=True)
    for number, name in chosen.items():
        data = thumbnail(FIGURES / number / name)
        if len(data) > MAX_BYTES:
            print(f"{number}/{name}: thumbnail of {len(data):,} bytes > {MAX_BYTES:,}",
                  file=sys.stderr)
            return 1
        (THUMBNAILS / f"{number}.png").write_bytes(data)
        print(f"lessons/thumbnails/{number}.png  {len(data):>6,} bytes  from figures/{number}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
