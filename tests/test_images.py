"""Image checks and decoding: every kind of file, good and bad, and TF/PIL agreement."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.images import DECODE_JPEG, DECODE_PIL, check_image, check_images, load_rgb
from tests.imagegen import (
    BAD_KINDS,
    GOOD_KINDS,
    decompression_bomb_png,
    make_image,
    picture,
    save_with_orientation,
)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return {kind: make_image(root / kind, kind) for kind in GOOD_KINDS}


def test_every_good_kind_is_kept_with_its_oriented_size(good_files):
    for kind, path in good_files.items():
        result = check_image(path)
        assert result.status == "ok", (kind, result.reason)
        assert len(result.sha256) == 64
        expected = (48, 64) if kind == "exif_rotated_jpeg" else (64, 48)
        assert (result.width, result.height) == expected, kind
        assert load_rgb(path).shape == (expected[1], expected[0], 3), kind


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_files_are_skipped_with_their_reason(tmp_path, kind):
    result = check_image(make_image(tmp_path / kind, kind))
    assert result.status == "skipped"
    assert result.reason.startswith(BAD_KINDS[kind]), result.reason


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    result = check_image(decompression_bomb_png(tmp_path / "bomb.png"), max_pixels=10_000_000)
    assert result.status == "skipped"
    assert "decompression bomb" in result.reason


def test_decoder_choice_routes_conversions_to_pil(good_files):
    decoders = {kind: check_image(path).decoder for kind, path in good_files.items()}
    assert decoders["rgb_jpeg"] == decoders["cmyk_jpeg"] == DECODE_JPEG
    for kind in ("rgba_png", "palette_transparent_png", "png16", "gif", "bmp"):
        assert decoders[kind] == DECODE_PIL, kind


def test_load_rgb_composites_transparency_on_white_and_keeps_16_bit_top_byte(good_files):
    rgba = load_rgb(good_files["rgba_png"])
    assert (rgba[-1, -1] == 255).all()  # the transparent corner
    assert tuple(rgba[0, 0]) == pytest.approx((230, 20, 20), abs=1)  # opaque pixels unchanged
    gray16 = load_rgb(good_files["png16"])
    expected = np.asarray(Image.fromarray(picture()).convert("L"))
    np.testing.assert_array_equal(gray16[..., 0], expected)


def test_check_images_in_parallel_matches_serial(good_files, tmp_path):
    paths = [p for _ in range(6) for p in good_files.values()] + [tmp_path / "missing.jpg"]
    parallel = check_images(paths, workers=2, progress=False)
    serial = [check_image(p) for p in paths]
    assert [r.row() for r in parallel] == [r.row() for r in serial]
    assert parallel[-1].status == "skipped" and "unreadable" in parallel[-1].reason


def test_tensorflow_decoding_matches_pil_for_every_kind_and_orientation(good_files, tmp_path):
    """What the model sees (the tf.data decoder) is what a person sees (PIL, EXIF applied)."""
    import tensorflow as tf

    from pipeline.inputs import decode_full

    base = Image.fromarray(picture(64, 48))
    files = dict(good_files)
    for orientation in range(1, 9):
        files[f"orientation{orientation}"] = save_with_orientation(
            base, tmp_path / f"o{orientation}.jpg", orientation
        )
    for name, path in files.items():
        check = check_image(path)
        decoded = decode_full(
            tf.constant(str(path)), tf.constant(check.decoder), tf.constant(check.orientation)
        ).numpy()
        expected = load_rgb(path)
        assert decoded.shape == expected.shape, name
        # TensorFlow's and PIL's JPEG decoders differ by rounding only.
        difference = np.abs(decoded.astype(int) - expected.astype(int)).mean()
        assert difference < 1.5, (name, difference)


def test_user_files_are_never_modified(good_files):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in good_files.values()}
    check_images(list(good_files.values()), workers=1, progress=False)
    for p in good_files.values():
        load_rgb(p)
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in good_files.values()}
