"""Classifying a sorted list of files as a stream: rows come out in path order, batch by batch.

Each file is decoded once: a pass over the headers first (``inspect_image``: format,
size, EXIF orientation, decoder; a file that does not end as a complete JPEG or PNG gets
the full check), then tf.data decodes each file exactly as ``build_eval_dataset`` does,
in parallel and ahead of the model, so decoding and the model overlap. A file that fails
in that decode is dropped from the stream (``ignore_errors``) and reported with its
reason, never fatal.
Each image is computed at a fixed place (batch and slot) given by its index in the sorted
list (``_Cells``), so a resumed run writes the same digits as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.images import check_image, check_named, inspect_image, text_path
from pipeline.predict.tflite import cpu_threads
from pipeline.predict.unknown import unknown_cells

# A log (stderr not a terminal) gets one progress line this often, in seconds.
PROGRESS_EVERY_S = 30.0
# Header reads in flight: enough to overlap reads from a cold disk, few enough that thread
# switching costs little when the files are already in the page cache.
HEADER_THREADS = 4
HEADER_WINDOW = 4096  # files header-checked per round (bounds the futures in memory)


def prediction_columns(labels: Sequence[str], probs: np.ndarray, top_k: int) -> dict[str, Any]:
    """predicted, probability and the top-k columns of one image's probabilities."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    row: dict[str, Any] = {"predicted": labels[order[0]], "probability": float(probs[order[0]])}
    for i, j in enumerate(order, start=1):
        row[f"top{i}_label"] = labels[j]
        row[f"top{i}_probability"] = float(probs[j])
    return row


@dataclass
class StreamCounts:
    """What one stream did: files read, classified, skipped (header or decode)."""

    read: int = 0
    classified: int = 0
    skipped: int = 0
    decode_failures: int = 0  # passed the header check, failed in the decode
    seconds: float = 0.0
    steady_rate: float = 0.0  # files/s after the first batch, header pass included


class _Progress:
    """tqdm on a terminal; otherwise a line every PROGRESS_EVERY_S with images/s and time left."""

    def __init__(self, total: int, desc: str = "Running the model", unit: str = "img") -> None:
        from tqdm import tqdm

        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.last_line = self.start
        self.desc = desc
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
            leave=True,
        )

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.bar.disable and now - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = now
            rate = self.done / (now - self.start)
            left = (self.total - self.done) / rate if rate else float("inf")
            print(
                f"  {self.desc}: {self.done}/{self.total} files, {rate:.0f} files/s, "
                f"about {_duration(left)} left",
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass
class Headers:
    """The files that passed the header check, in path order: what tf.data decodes."""

    index: np.ndarray  # int64, position in the sorted list of paths
    path: np.ndarray  # bytes (os.fsencode)
    decoder: np.ndarray  # bytes, pipeline.images.DECODE_*
    orientation: np.ndarray  # int32, EXIF 1..8
    size: np.ndarray  # int64, bytes, before the file was read
    mtime: np.ndarray  # int64, ns, before the file was read
    seconds: float = 0.0


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def check_headers(
    paths: Sequence[Path],
    todo: bytearray,
    skipped: dict[int, tuple[str, int, int]],
    min_side: int,
    max_pixels: int,
) -> Headers:
    """Header-check the files ``todo`` flags, up front; failures go into ``skipped``.

    Done before the stream rather than inside it, so that no Python runs in the decode
    pipeline (a ``from_generator`` source holds the interpreter lock beside the model); a
    pass over the headers costs about 0.2 ms a file. Threads overlap the reads on a cold
    disk; the windows bound the futures alive at once.
    """
    start = time.perf_counter()
    wanted = [i for i in range(len(paths)) if todo[i]]
    windows: list[tuple[np.ndarray, ...]] = []
    progress = _Progress(len(wanted), "Checking headers", "file")

    def one(i: int) -> tuple[int, tuple[int, int], Any]:
        stamp = _stamp(paths[i])  # before the read, as the resume key needs
        return i, stamp, check_named(paths[i], inspect_image, min_side, max_pixels)

    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        for lo in range(0, len(wanted), HEADER_WINDOW):
            window, rows = wanted[lo : lo + HEADER_WINDOW], []
            for i, stamp, check in pool.map(one, window):
                if check.status != "ok":
                    skipped[i] = (check.reason, *stamp)
                    continue
                path = os.fsencode(paths[i])  # bytes: any file name TensorFlow can open
                rows.append((i, path, check.decoder, check.orientation, *stamp))
            windows.append(_columns(rows))
            progress.update(len(window))
    progress.close()
    index, path, decoder, orientation, size, mtime = (
        np.concatenate(column) for column in zip(*windows or [_columns([])])
    )
    seconds = time.perf_counter() - start
    return Headers(index, path, decoder, orientation, size, mtime, seconds)


def _columns(rows: list[tuple]) -> tuple[np.ndarray, ...]:
    """Compact arrays (about 100 bytes a file) of check_headers' rows."""
    types = (np.int64, np.bytes_, np.bytes_, np.int32, np.int64, np.int64)
    if not rows:
        return tuple(np.array([], t) for t in types)
    return tuple(np.array(column, t) for column, t in zip(zip(*rows), types))


def decode_dataset(headers: Headers, size: int, fraction: float, backbone: Any, batch: int) -> Any:
    """Batches of (index, size, mtime_ns, image) for the files in ``headers``, in order.

    Files that fail in the decode are left out (their index is missing). The images are
    what build_eval_dataset gives: preprocessed for ``backbone``, raw pixels when it is None.
    """
    import tensorflow as tf

    from pipeline.backbones import preprocess
    from pipeline.inputs import decode_center

    preprocessed = backbone is not None

    def load(index, path, decoder, orientation, file_size, mtime):
        # The two steps of build_eval_dataset's map, so predict and evaluate agree.
        image = decode_center(path, decoder, orientation, size, fraction)
        if preprocessed:
            image = preprocess(image, backbone)
        return index, file_size, mtime, image

    h = headers
    ds = tf.data.Dataset.from_tensor_slices(
        (h.index, h.path, h.decoder, h.orientation, h.size, h.mtime)
    )
    ds = ds.map(load, num_parallel_calls=cpu_threads(), deterministic=True)
    ds = ds.ignore_errors().batch(batch).prefetch(2)
    # Without autotuning: deleting an autotuned iterator waits for its optimiser thread,
    # for up to seconds (as long as a whole stream of a thousand photos). One decode per
    # core keeps ahead of the model: the stream alone runs several times the model's rate
    # (benchmarks/README.md, Predict).
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def classify_stream(
    clf: Any,
    paths: Sequence[Path],
    todo: bytearray,
    header: Sequence[str],
    emit: Callable[[list[list[Any]]], None],
    top_k: int,
    tta: str = "none",
    batch_size: int | None = None,
) -> StreamCounts:
    """Classify ``paths[i]`` for each ``todo[i]``, handing rows to ``emit`` in path order.

    A row is ``header``'s columns, then the file's size and modification time (ns) as they
    were before it was read. ``clf`` is a ``pipeline.predict.classifier.Classifier``.
    """
    cfg, labels = clf.cfg, clf.labels
    top_k = min(top_k, len(labels))
    batch = batch_size or cfg.input.batch_size
    min_side, max_pixels = cfg.data.min_side, cfg.data.max_pixels
    counts = StreamCounts()
    skipped: dict[int, tuple[str, int, int]] = {}  # header failures the writer has not reached
    headers = check_headers(paths, todo, skipped, min_side, max_pixels)
    backbone = None if clf.raw_pixels else clf.spec.backbone
    ds = decode_dataset(headers, clf.spec.size, cfg.input.eval_crop_fraction, backbone, batch)

    total = sum(todo)
    images = len(headers.index)
    if total:
        batches = math.ceil(images / batch)
        print(
            f"Running the model on {images} images "
            f"({batches} batch{'es' if batches != 1 else ''} of {batch})",
            flush=True,
        )
    progress = _Progress(total)
    start = time.perf_counter()
    cursor = 0  # the next index whose row is due

    def rows_until(limit: int, done: dict[int, tuple]) -> list[list]:
        nonlocal cursor
        rows = []
        while cursor <= limit:
            i, cursor = cursor, cursor + 1
            if not todo[i]:
                continue
            counts.read += 1
            row: dict[str, Any] = {"path": text_path(paths[i]), "status": "ok", "reason": ""}
            if i in done:
                file_size, mtime, probs, score = done[i]
                row.update(prediction_columns(labels, probs, top_k))
                row.update(unknown_cells(clf.unknown, score))
                counts.classified += 1
            else:
                if i in skipped:
                    reason, file_size, mtime = skipped.pop(i)
                else:  # passed the header check, failed in tf.data's decode
                    reason, file_size, mtime = _decode_failure(paths[i], min_side, max_pixels)
                    counts.decode_failures += 1
                row.update(status="skipped", reason=reason)
                counts.skipped += 1
            rows.append([*(row.get(h, "") for h in header), file_size, mtime])
        return rows

    cells = _Cells(clf.predict_scored, clf.predict_batch, batch, tta)
    first: tuple[float, int] | None = None  # when the first batch was done, files read by then
    try:
        for index, file_sizes, mtimes, pixels in ds:
            for cell, done in cells.add(index.numpy(), file_sizes.numpy(), mtimes.numpy(), pixels):
                rows = rows_until(min((cell + 1) * batch, len(paths)) - 1, done)
                emit(rows)
                progress.update(len(rows))
                if first is None:
                    first = (time.perf_counter(), counts.read)
        for cell, done in cells.finish():
            rows = rows_until(min((cell + 1) * batch, len(paths)) - 1, done)
            emit(rows)
            progress.update(len(rows))
        rows = rows_until(len(paths) - 1, {})  # header failures after the last image
        emit(rows)
        progress.update(len(rows))
    finally:
        progress.close()
    end = time.perf_counter()
    counts.seconds = end - start + headers.seconds
    if first is not None and end > first[0] and counts.read > first[1]:
        # The header pass is per-file work too: its share for these files is counted.
        steady = counts.read - first[1]
        header_share = headers.seconds * steady / counts.read
        counts.steady_rate = steady / (end - first[0] + header_share)
    return counts


class _Cells:
    """Images regrouped by place: path index i goes to batch i // size, slot i % size.

    CPU kernels give an image's last digits differently for different batch sizes and
    slots, so every image is computed at the place its index gives it (zeros fill the
    slots of unreadable or already-classified files): the digits then do not depend on
    where a run started or stopped. A folder of photos has few such holes.
    """

    def __init__(
        self, predict_scored: Callable, predict_batch: Callable, size: int, tta: str
    ) -> None:
        self.predict_scored, self.predict_batch = predict_scored, predict_batch
        self.size, self.tta = size, tta
        self.cell = -1
        self.buffer: np.ndarray | None = None
        self.stamps: dict[int, tuple[int, int]] = {}

    def add(self, index: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray, pixels: Any):
        """Yield (cell, {index: (size, mtime, probabilities, unknown score or None)}) for
        each cell completed."""
        x = pixels.numpy()
        if self.buffer is None:
            self.buffer = np.zeros((self.size, *x.shape[1:]), x.dtype)
        cells = index // self.size
        for cell in np.unique(cells):
            if cell != self.cell:
                if self.stamps:
                    yield self.cell, self._run()
                self.cell = int(cell)
            mine = cells == cell
            self.buffer[index[mine] % self.size] = x[mine]
            for i, s, m in zip(index[mine], sizes[mine], mtimes[mine]):
                self.stamps[int(i)] = (int(s), int(m))

    def finish(self):
        """Yield the last cell, if images wait in it."""
        if self.stamps:
            yield self.cell, self._run()

    def _run(self) -> dict[int, tuple]:
        filled = np.zeros(self.size, bool)
        filled[[i % self.size for i in self.stamps]] = True
        self.buffer[~filled] = 0  # holes: the slots of files not classified here
        probs, scores = self.predict_scored(self.buffer)  # one pass: probabilities, scores
        if self.tta == "flip":  # the score stays the photo's own view's (Classifier.scored)
            mirrored = self.buffer[:, :, ::-1]  # (batch, height, width, channels)
            probs = (probs + np.asarray(self.predict_batch(mirrored))) / 2
        probs = probs.astype(np.float64)
        done = {
            i: (*stamp, probs[i % self.size], None if scores is None else scores[i % self.size])
            for i, stamp in self.stamps.items()
        }
        self.stamps = {}
        return done


def _decode_failure(path: Path, min_side: int, max_pixels: int) -> tuple[str, int, int]:
    """The reason a file failed in the decode: the full check's, or TensorFlow's refusal."""
    check = check_image(path, min_side, max_pixels)
    reason = check.reason or "truncated or corrupt: TensorFlow's decoder cannot read it"
    return reason, *_stamp(path)
