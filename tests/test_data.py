"""Decoding the real dataset's quirks and the one preprocessing function."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.evaluation.datasets import read_trimap
from edgeseg.runtime.images import ImageError, preprocess, read_image, resize
from edgeseg.runtime.meta import ModelMeta


def test_dataset_quirks_decode_to_bgr(pets3):
    gif = read_image(pets3 / "images" / "Abyssinian_34.jpg")  # a GIF named .jpg
    rgba = read_image(pets3 / "images" / "Abyssinian_5.jpg")  # an RGBA PNG named .jpg
    for img in (gif, rgba):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_gray_and_16bit_images(tmp_path, pets3):
    photo = read_image(pets3 / "images" / "Bengal_10.jpg")
    cv2.imwrite(str(tmp_path / "g.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "d.png"), photo.astype(np.uint16) * 257)
    assert read_image(tmp_path / "g.png").shape == photo.shape
    assert np.array_equal(read_image(tmp_path / "d.png"), photo)  # 16-bit scaled back to 8


def test_corrupt_image_is_an_image_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        read_image(bad)


def test_trimap_maps_to_class_ids(pets3):
    t = read_trimap(pets3 / "annotations" / "trimaps" / "Abyssinian_1.png")
    assert set(np.unique(t)) <= {0, 1, 2}


@pytest.mark.parametrize("frame", [None, (1280, 720), (1920, 1080), (1283, 725)])
def test_area_resize_is_close_to_opencv_area(pets3, frame):
    """Photos and HD camera frames (halved first, odd sizes included) stay close to a true area filter."""
    photo = read_image(pets3 / "images" / "Abyssinian_1.jpg")
    if frame:
        photo = cv2.resize(photo, frame, interpolation=cv2.INTER_CUBIC)
    ours = resize(photo, (128, 128), "area").astype(int)
    ref = cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA).astype(int)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).mean() < (0.5 if frame is None else 0.75)


def test_preprocess_is_rgb_nchw_in_range(pets3):
    photo = read_image(pets3 / "images" / "Abyssinian_1.jpg")
    meta = ModelMeta(input_size=(64, 96), interpolation="nearest")
    x = preprocess([photo, photo], meta)
    assert x.shape == (2, 3, 64, 96) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    small = cv2.resize(photo, (96, 64), interpolation=cv2.INTER_NEAREST)
    assert np.allclose(x[0, 0], small[:, :, 2] / 255.0)  # channel 0 is red
    assert np.array_equal(preprocess(photo, meta)[0], x[1])
