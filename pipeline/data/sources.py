"""Where a data set's files are: a local folder, a local archive, or a download.

Every source resolves to folders of class subfolders (``Source``); nothing downstream
knows whether the files came from an archive, a download or the user's own folder. Local
copies always win over the network, and an offline failure says exactly which file to
fetch and where to put it.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.files import read_json, replace_dir, write_json
from pipeline.images import DEBRIS_DIRS, file_sha256, has_image_extension, is_ignored

FLOWERS_URL = "http://download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_ARCHIVE = "flower_photos.tgz"
FLOWERS_FOLDER = "flower_photos"
INTEL_KAGGLE_ID = "puneet6060/intel-image-classification"
INTEL_URL = f"https://www.kaggle.com/datasets/{INTEL_KAGGLE_ID}"
INTEL_ARCHIVES = ("archive.zip", "intel-image-classification.zip")
INTEL_FOLDERS = ("intel-image-classification", "archive")
ARCHIVE_SUFFIXES = (".zip", ".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tar.xz")


class SourceError(RuntimeError):
    """A data set that cannot be found or read; the message says what to do."""


@dataclass
class Source:
    name: str  # folder name under data/: flowers, intel, or the user's folder name
    origin: str  # where the files were found, for the user
    roots: list[tuple[Path, str | None]]  # (folder of class subfolders, given split or None)
    unlabelled: Path | None = None  # images without labels, for prediction (Intel seg_pred)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- archives


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_member_reason(name: str) -> str | None:
    """Why a member name could escape the target folder, or None when it cannot."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in posix.parts:
        return "'..' in path"
    return None


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a zip or tar archive into ``target``, never writing outside it.

    Members with absolute paths or '..' make the whole archive refused; links and device
    files are skipped. The archive is unpacked into a temporary sibling folder that is
    renamed to ``target`` only when complete, so an interrupted extraction never looks done;
    partial folders that an interrupted run left are removed first. ``target`` is reused
    while the archive is unchanged (size and modification time, else its sha256, as recorded
    in ``<target>.json``) and extracted afresh when it changed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    record_path = target.with_name(f"{target.name}.json")
    st = archive.stat()
    record = read_json(record_path) or {}
    if target.is_dir() and (record.get("size"), record.get("mtime_ns")) == (
        st.st_size,
        st.st_mtime_ns,
    ):
        return target
    digest = file_sha256(archive)
    if target.is_dir() and record.get("sha256") == digest:
        write_json(record_path, {**record, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return target
    if target.is_dir():
        print(f"{archive} changed since it was extracted: extracting it again")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        replace_dir(tmp, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise SourceError(f"{archive}: not a readable archive ({exc}); download it again") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    record = {"archive": str(archive), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    write_json(record_path, {**record, "sha256": digest})
    return target


def _check_member(archive: Path, name: str, root: Path) -> Path:
    reason = _unsafe_member_reason(name)
    dest = (root / name).resolve()
    if reason is None and not dest.is_relative_to(root.resolve()):
        reason = "resolves outside the folder"
    if reason:
        raise SourceError(
            f"{archive}: member {name!r} would be written outside the extraction folder "
            f"({reason}); refusing this archive. Extract it yourself and use folder:PATH"
        )
    return dest


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            dest = _check_member(archive, info.filename, root)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                continue  # a link could point anywhere: never recreate it
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive) as tf:
        for member in tf:
            dest = _check_member(archive, member.name, root)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(member)
                if src is not None:
                    with src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
            # links, devices and fifos are skipped: they could point outside the folder


# ----------------------------------------------------------------------------- layouts


def subfolders(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in DEBRIS_DIRS
    )


def _has_direct_images(path: Path) -> bool:
    return any(p.is_file() and has_image_extension(p) and not is_ignored(p) for p in path.iterdir())


def find_class_root(path: Path) -> Path:
    """Descend through single wrapper folders (flower_photos/, archive names) to the classes.

    A wrapper is a lone folder that itself holds folders; a lone folder of images is one
    class, which no classifier can be trained on.
    """
    current = path
    for _ in range(4):
        subdirs = subfolders(current)
        if len(subdirs) == 1 and not _has_direct_images(current) and subfolders(subdirs[0]):
            current = subdirs[0]
        else:
            break
    subdirs = subfolders(current)
    if not subdirs:
        raise SourceError(
            f"{current} has no class subfolders: put each class in its own folder "
            f"({current}/<class name>/<images>)"
        )
    if len(subdirs) == 1:
        raise SourceError(
            f"{current} holds one class folder ({subdirs[0].name}); a classifier needs at "
            f"least 2: put each class's images in its own folder beside it "
            f"({current}/<class name>/<images>)"
        )
    return current


def _find_dir(root: Path, name: str, depth: int = 3) -> Path | None:
    """The shallowest folder called ``name`` below root."""
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            if folder.name == name:
                return folder
            nxt.extend(subfolders(folder))
        frontier = nxt
    return None


def _unnest(folder: Path) -> Path:
    """Kaggle's archive nests seg_train/seg_train/: accept both that and the flat layout."""
    inner = folder / folder.name
    return inner if inner.is_dir() else folder


def intel_layout(root: Path) -> Source:
    train = _find_dir(root, "seg_train")
    if train is None:
        raise SourceError(
            f"{root}: no seg_train folder; expected the Intel archive's layout "
            "seg_train/seg_train/<class>/ (or seg_train/<class>/)"
        )
    base = train.parent
    roots: list[tuple[Path, str | None]] = [(_unnest(train), None)]
    test = base / "seg_test"
    if test.is_dir():
        roots.append((_unnest(test), "test"))
    pred = base / "seg_pred"
    return Source(
        name="intel",
        origin=str(base),
        roots=roots,
        unlabelled=_unnest(pred) if pred.is_dir() else None,
    )


# ----------------------------------------------------------------------------- sources


def check_download_reachable(url: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not after minutes of retries, when the network is not there."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {url}: {reason}") from exc


def download_flowers(data_dir: Path, url: str = FLOWERS_URL) -> Path:
    """Fetch flower_photos.tgz with tensorflow-datasets' download manager (checksummed)."""
    check_download_reachable(url)
    from pipeline.quiet import import_tensorflow_unless_verbose

    import_tensorflow_unless_verbose()  # the data stage does not import it up front
    import tensorflow_datasets as tfds

    manager = tfds.download.DownloadManager(download_dir=str(data_dir / "downloads"))
    return Path(manager.download(url))


def flowers_source(data_dir: Path, out_dir: Path, url: str = FLOWERS_URL) -> Source:
    """A hand-placed folder first; else the archive, whose extraction ``safe_extract`` redoes
    when the archive changed; else an earlier extraction; else the download."""
    placed = data_dir / FLOWERS_FOLDER
    if placed.is_dir():
        return Source("flowers", str(placed), [(find_class_root(placed), None)])
    extracted = out_dir / "extracted"
    archive = data_dir / FLOWERS_ARCHIVE
    notes = []
    if not archive.is_file() and extracted.is_dir():
        return Source("flowers", str(extracted), [(find_class_root(extracted), None)])
    if not archive.is_file():
        try:
            archive = download_flowers(data_dir, url)
            notes.append(f"downloaded {url}")
        except Exception as exc:  # any failure becomes the one actionable message below
            raise SourceError(
                f"flowers: no local copy and the download failed ({exc}). On a machine with "
                f"a network, download {url} and put {FLOWERS_ARCHIVE} at {archive} (or its "
                f"extracted folder at {data_dir / FLOWERS_FOLDER}/), then run make data again"
            ) from exc
    folder = safe_extract(archive, extracted)
    return Source("flowers", str(archive), [(find_class_root(folder), None)], notes=notes)


def intel_source(data_dir: Path, out_dir: Path) -> Source:
    """A hand-placed folder first; else the archive (extracted again when it changed, by
    ``safe_extract``); else an earlier extraction."""
    for folder in (data_dir / name for name in INTEL_FOLDERS):
        if folder.is_dir():
            return intel_layout(folder)
    extracted = out_dir / "extracted"
    for name in INTEL_ARCHIVES:
        if (data_dir / name).is_file():
            source = intel_layout(safe_extract(data_dir / name, extracted))
            source.origin = str(data_dir / name)
            return source
    if extracted.is_dir():
        return intel_layout(extracted)
    raise SourceError(
        f"intel: not found under {data_dir}/. It needs a Kaggle account: run "
        f"`kaggle datasets download -d {INTEL_KAGGLE_ID} -p {data_dir}` (or download archive.zip "
        f"from {INTEL_URL}) and leave the zip at {data_dir / INTEL_ARCHIVES[0]} or its "
        f"extracted folder at {data_dir / INTEL_FOLDERS[0]}/, then run make data again"
    )


def folder_source(spec: str, data_dir: Path, out_dir: Path) -> Source:
    path = Path(spec).expanduser()
    name = out_dir.name
    if is_archive(path):
        folder = safe_extract(path, out_dir / "extracted")
        return Source(name, str(path), [(find_class_root(folder), None)])
    if not path.is_dir():
        raise SourceError(
            f"folder:{spec}: no such folder or archive; give a folder of class subfolders "
            f"or a .zip/.tgz of one, e.g. DATASET=folder:~/photos"
        )
    if data_dir.resolve().is_relative_to(path.resolve()):
        raise SourceError(
            f"folder:{spec} holds the pipeline's own {data_dir}/ folder (was the path left "
            "empty?); give the folder of class subfolders itself, e.g. DATASET=folder:~/photos"
        )
    if _find_dir(path, "seg_train", depth=2) is not None:
        layout = intel_layout(path)
        return Source(name, str(path), layout.roots, layout.unlabelled)
    return Source(name, str(path), [(find_class_root(path), None)])


def resolve_source(dataset: str, data_dir: str | Path, out_dir: str | Path) -> Source:
    """The one entry: 'flowers', 'intel' or 'folder:PATH' to folders of class subfolders.

    ``data_dir`` is where hand-placed copies are looked for; archives are extracted into
    ``out_dir`` (the data set's own folder under it).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if dataset == "flowers":
        return flowers_source(data_dir, out_dir)
    if dataset == "intel":
        return intel_source(data_dir, out_dir)
    if dataset.startswith("folder:"):
        return folder_source(dataset[len("folder:") :], data_dir, out_dir)
    raise SourceError(f"Unknown data set {dataset!r}: use flowers, intel or folder:PATH")
