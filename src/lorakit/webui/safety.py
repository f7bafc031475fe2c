"""What the web UI may touch: paths confined to allowed folders, uploads kept small and in a folder the UI owns."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from lorakit.config import WebUIConfig
from lorakit.errors import ConfigError

UPLOAD_DIR = "webui-uploads"
SEARCH_DEPTH = 3  # folders below the working directory searched for files to offer (data, suites)


def allowed_folders(config: WebUIConfig, cwd: Path | None = None) -> tuple[Path, ...]:
    """The folders a typed or picked path may lie in: the working directory, `outputs`, lorakit's cache and
    `allow_dirs`, all resolved (so a symlink cannot lead out of them)."""
    from lorakit.bundled import cache_root

    cwd = Path.cwd() if cwd is None else cwd
    folders = [cwd, cwd / config.outputs, cache_root(), *(cwd / folder for folder in config.allow_dirs)]
    return tuple(dict.fromkeys(Path(folder).expanduser().resolve() for folder in folders))


def confine(text: str, allowed: Sequence[Path], cwd: Path | None = None) -> Path:
    """The path `text` names, resolved, or ConfigError when it lies outside every folder of `allowed`."""
    if not text or not text.strip():
        raise ConfigError("No path given: type a file path or pick a file.")
    cwd = Path.cwd() if cwd is None else cwd
    path = Path(text.strip()).expanduser()
    resolved = (path if path.is_absolute() else cwd / path).resolve()
    if any(resolved.is_relative_to(folder) for folder in allowed):
        return resolved
    raise ConfigError(f"{text.strip()} is outside the folders the web UI may read ({', '.join(map(str, allowed))}). "
                      "Move the file into one of them, or start `lorakit webui --allow-dir FOLDER`.")


def confine_model(name: str, allowed: Sequence[Path], cwd: Path | None = None) -> str:
    """A model as `model.name` takes it: a folder is confined like any path (and returned resolved); a bundled name
    or hub id is passed through."""
    name = name.strip()
    if not name:
        raise ConfigError("No model given: pick a bundled or cached model, or type a model folder.")
    cwd = Path.cwd() if cwd is None else cwd
    looks_like_path = name.startswith(("/", ".", "~")) or (cwd / name).exists()
    return str(confine(name, allowed, cwd)) if looks_like_path else name


def keep_upload(uploaded: Path, config: WebUIConfig, cwd: Path | None = None) -> Path:
    """Copy an uploaded file into `outputs/webui-uploads/` and return the copy; ConfigError above the size limit."""
    uploaded = Path(uploaded)
    size = uploaded.stat().st_size
    if size > config.max_upload_mb * 2**20:
        raise ConfigError(f"{uploaded.name} is {size / 2**20:.1f} MiB, above the upload limit of "
                          f"{config.max_upload_mb} MiB. Copy it into an allowed folder and type its path, or start "
                          "`lorakit webui --max-upload-mb N`.")
    folder = (Path.cwd() if cwd is None else cwd) / config.outputs / UPLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(uploaded.name).name
    shutil.copyfile(uploaded, target)
    return target


def files_under(folder: Path, depth: int, skip: Path | None = None) -> Iterator[Path]:
    """Files in `folder` and up to `depth` folders below, leaving out hidden ones, `skip` (the run folders) and
    model folders (their config and tokenizer JSON are no datasets)."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return
    if any((folder / marker).is_file() for marker in ("config.json", "adapter_config.json")):
        return
    for child in children:
        if child.name.startswith(".") or child.is_symlink():
            continue
        if child.is_dir():
            if depth > 0 and child.resolve() != skip:
                yield from files_under(child, depth - 1, skip)
        else:
            yield child


def display_path(path: Path, cwd: Path) -> str:
    """`path` relative to the working directory where it lies inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(cwd.resolve())) if path.is_relative_to(cwd.resolve()) else str(path)
