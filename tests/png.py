"""What a written figure must be: a PNG that decodes, of the expected size, and not blank."""

from pathlib import Path

VARIANCE_FLOOR = 100.0  # grey-level variance (0-255 scale); a blank or single-colour image is ~0


def assert_picture(path: Path, size: tuple[int, int] | None = None) -> None:
    """``path`` decodes as a PNG of ``size`` (width, height) pixels whose grey levels vary."""
    from PIL import Image, ImageStat

    assert path.is_file(), f"{path}: not written"
    with Image.open(path) as image:
        assert image.format == "PNG", f"{path}: {image.format}, expected PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        if size is not None:
            assert image.size == size, f"{path}: {image.size} pixels, expected {size}"
        variance = ImageStat.Stat(image.convert("L")).var[0]
    assert variance > VARIANCE_FLOOR, (
        f"{path}: grey-level variance {variance:.1f} <= {VARIANCE_FLOOR}: a blank picture")


def grey_difference(a: bytes | Path, b: bytes | Path) -> float:
    """The mean absolute difference of two pictures' grey levels (0-255), inf when their sizes
    differ: about 0 for the same drawing, whatever the PNG encoder did."""
    import io

    from PIL import Image, ImageChops, ImageStat

    def grey(picture: bytes | Path) -> Image.Image:
        with Image.open(io.BytesIO(picture) if isinstance(picture, bytes) else picture) as image:
            return image.convert("L")

    first, second = grey(a), grey(b)
    if first.size != second.size:
        return float("inf")
    return ImageStat.Stat(ImageChops.difference(first, second)).mean[0]
