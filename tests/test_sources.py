"""Sources: names read as what they are, unique output names, live sources that stall, never deliver, or are
told to wait for ever, and readers that are stopped (review #39 items 5-8 and 19-22)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, FakeCamera

from edgeseg.errors import EdgesegError
from edgeseg.runtime.loop import sources
from edgeseg.runtime.loop.live import LiveSource
from edgeseg.runtime.loop.sources import MAX_NAME_BYTES, FileSource, open_source, output_names


def photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((REPO / "calibration" / "beagle_10.jpg").read_bytes())
    return path


@pytest.mark.parametrize("name", ["wow!", "2024", "cat [1]"])
def test_an_existing_folder_wins_over_every_pattern_rule(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / name / "a.jpg")
    src = open_source(name)
    assert isinstance(src, FileSource) and [p.name for p in src.paths] == ["a.jpg"]


def test_an_existing_file_with_glob_characters_is_that_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "cat [1].jpg")
    src = open_source("cat [1].jpg")
    assert isinstance(src, FileSource) and src.paths == [Path("cat [1].jpg")]


def test_output_names_never_collide():
    names = output_names([Path("cat.jpg"), Path("cat.JPG"), Path("cat_jpg_2.jpg"), Path("Dog.png"), Path("dog.png")])
    assert len({n.lower() for n in names}) == 5, names
    assert names[:2] == ["cat_jpg", "cat_jpg_2"]


def test_long_recursive_names_fit_a_file_system(tmp_path):
    root = tmp_path / "r"
    deep = root.joinpath(*["a-rather-long-folder-name-" + str(i) for i in range(12)])
    paths = [deep / "photo.jpg", deep / "photo2.jpg"]
    names = output_names(paths, root)
    assert all(len(n.encode()) <= MAX_NAME_BYTES for n in names) and len(set(names)) == 2
    for n in names:  # and the file system takes them, with an extension
        (tmp_path / f"{n}.png").write_bytes(b"x")


def test_a_looped_folder_counts_an_unreadable_file_once(tmp_path):
    photo(tmp_path / "f" / "a.jpg")
    (tmp_path / "f" / "b.jpg").write_bytes(b"not a jpeg")
    src = open_source(str(tmp_path / "f"), loop=True)
    with pytest.warns(UserWarning, match="b.jpg: not a decodable image"):
        frames = [f for _, f in zip(range(20), src, strict=False)]
    src.close()
    assert len(frames) == 20 and src.stats.skipped == 1 and len(src.stats.skipped_files) == 1


def test_closing_a_file_source_stops_its_reader(tmp_path):
    for i in range(6):
        photo(tmp_path / "f" / f"{i}.jpg")
    src = open_source(str(tmp_path / "f"))
    next(iter(src))
    src.close()
    assert src._thread is not None and not src._thread.is_alive()


@pytest.mark.parametrize(("spec", "options", "refused"), [
    ("folder", {"width": 640}, "--width applies only to cameras (--camera N, /dev/videoN, csi://N), and this "
                                "source is a folder"),
    ("clip.mp4", {"recursive": True}, "--recursive applies only to folders, and this source is a video file"),
    ("folder/a.jpg", {"fps": 15}, "--fps applies only to cameras"),
    ("folder/*.jpg", {"flip": 2}, "--flip applies only to csi://N cameras, and this source is a glob pattern"),
    ("rtsp://user:secret@cam/stream", {"height": 480}, "this source is a stream URL"),
    ("videotestsrc ! appsink", {"width": 640}, "this source is a GStreamer pipeline"),
    (0, {"loop": True}, "--loop applies only to folders, globs, images and video files, and this source is a camera"),
    ("csi://0", {"recursive": True}, "this source is a CSI camera"),
])
def test_an_option_the_source_would_ignore_is_refused_before_it_opens(tmp_path, monkeypatch, spec, options, refused):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "folder" / "a.jpg")
    (tmp_path / "clip.mp4").write_bytes(b"")  # never read: the refusal comes first
    with pytest.raises(EdgesegError, match=re.escape(refused)) as e:
        open_source(spec, **options)
    assert "secret" not in str(e.value)


def test_the_options_a_source_uses_are_taken(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "folder" / "sub" / "a.jpg")
    src = open_source("folder", recursive=True, loop=True)
    assert isinstance(src, FileSource) and [p.name for p in src.paths] == ["a.jpg"] and src.loop
    assert open_source("folder/*/*.jpg", loop=True).loop
    # no camera here: the live source is replaced by the CaptureSpec it would open
    monkeypatch.setattr(sources, "LiveSource", lambda opener, *args, **kwargs: opener.__self__)
    camera = open_source(3, width=640, height=480, fps=15)
    assert (camera.target, camera.width, camera.height, camera.fps) == (3, 640, 480, 15)
    csi = open_source("csi://1", width=1920, height=1080, fps=60, flip=2).target
    assert "sensor-id=1 " in csi and "width=1920, height=1080" in csi and "framerate=60/1" in csi
    assert "flip-method=2 " in csi


def drain(src: LiveSource, seconds: float) -> int:
    """Frames delivered before the source ends; fails (rather than hangs) past ``seconds``."""
    got = []
    t = threading.Thread(target=lambda: got.extend(1 for _ in src), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the source was still waiting after {seconds} s"
    return len(got)


def test_a_stalled_stream_is_reopened_before_the_run_ends():
    """A read that blocks 7 s with --reconnect 5 ended the run at 7 s with 0 reconnects (item 19)."""
    first = FakeCamera(5, block=7.0)
    cams = iter([first, FakeCamera(5)])
    src = LiveSource(lambda: next(cams, FakeCamera(0, opened=False)), "stalling stream", reconnect=5.0, stall=0.5)
    got = drain(src, 15)
    src.close()
    assert got + src.stats.dropped == 10 and src.stats.reconnects == 1
    assert "stopped delivering frames" in src.error  # the second camera's end, not the stall
    deadline = time.monotonic() + 10
    while not first.released and time.monotonic() < deadline:  # the abandoned reader lets go when its read returns
        time.sleep(0.1)
    assert first.released


def test_a_camera_that_opens_but_never_delivers_is_given_up():
    """Each successful open reset the window, so it was reopened for ever (item 20)."""
    src = LiveSource(lambda: FakeCamera(0), "mute camera", reconnect=1.0, first_frame_timeout=1.0, stall=0.5)
    assert drain(src, 10) == 0
    src.close()
    assert "delivered no frame" in src.error and src.stats.reconnects < 10


def test_reconnect_for_ever_waits_without_overflowing():
    """--reconnect inf raised OverflowError in Condition.wait (item 22)."""
    src = LiveSource(lambda: FakeCamera(50), "camera", reconnect=float("inf"))
    frames = [f for _, f in zip(range(3), src, strict=False)]
    src.close()
    assert len(frames) == 3


def test_a_live_frame_carries_its_capture_time():
    src = LiveSource(lambda: FakeCamera(50, period=0.01), "camera", reconnect=1.0)
    for frame in src:
        assert frame.captured <= time.perf_counter()
        break
    src.close()

