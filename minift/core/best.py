"""The best model so far, kept in `out_dir/best/` and replaced whole or not at all.

`save_best(model, folder)` writes the model into an empty temporary sibling, `best.new/`; every
file under it is fsynced; then two renames swap it in (`best/` -> `best.old/`, `best.new/` ->
`best/`). A crash while writing leaves `best/` as it was; a crash between the two renames leaves
`best.old/`, which `recover_best` renames back at the next start. (The loop writes resume.pt
after the swap, so it never refers to a best that did not land.)
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from torch import nn

from minift.core.files import atomic_write, fsync_dir
from minift.core.safetensors import encode_safetensors


def default_save_best(model: nn.Module, folder: Path) -> None:
    """`model.save_pretrained(folder)` if it has one, else its state dict as model.safetensors."""
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained(folder)
    else:
        atomic_write(folder / "model.safetensors",
                     encode_safetensors(model.state_dict(), {"format": "pt"}))


def _fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then the folders themselves."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def _swap_folders(best_dir: Path) -> tuple[Path, Path]:
    """The temporary siblings of `best_dir`: the new one being written, the old one going away."""
    return best_dir.with_name(best_dir.name + ".new"), best_dir.with_name(best_dir.name + ".old")


def save_best_atomically(save_best: Callable[[nn.Module, Path], None], model: nn.Module,
                         best_dir: Path) -> None:
    """Write the model into `best.new`, then swap it in: best -> best.old, best.new -> best."""
    new, old = _swap_folders(best_dir)
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    try:
        save_best(model, new)
        _fsync_tree(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if best_dir.exists():
        os.rename(best_dir, old)
    os.rename(new, best_dir)
    fsync_dir(best_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_best(best_dir: Path) -> None:
    """Undo what a crash during `save_best_atomically` left: the previous best comes back."""
    new, old = _swap_folders(best_dir)
    if old.is_dir() and not best_dir.exists():
        os.rename(old, best_dir)
        print(f"train: restored {best_dir} from {old.name} (a swap was interrupted)")
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)
