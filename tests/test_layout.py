"""The dataset contract (ldm.data.layout) against the original's facts (SPEC 1-3)."""

from __future__ import annotations

import pytest

from ldm.data import layout


def test_landmark_sets_are_the_originals():
    # the original: landmarks[0:4] followed by landmarks[13:48]; mask polygon 2..14 then 33
    assert layout.UPPER_FACE_LANDMARKS == tuple(range(0, 4)) + tuple(range(13, 48))
    assert len(layout.UPPER_FACE_LANDMARKS) == 39
    assert layout.JAW_POLYGON == (*range(2, 15), 33)
    assert not set(layout.MOUTH) & set(layout.UPPER_FACE_LANDMARKS)
    assert layout.upper_face_index(layout.NOSE_TIP) == 21


def test_keys_format_and_parse():
    assert layout.format_key(105, 1) == "105_1"
    assert layout.parse_key(" 105_1\n") == (105, 1)
    for bad in ("105", "a_1", "1_2_3", "1-2"):
        with pytest.raises(ValueError, match="<id>_<frame>"):
            layout.parse_key(bad)


def test_data_txt_round_trip_and_problems(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text(layout.format_data_txt({1: 250, 3: 1499}))
    assert path.read_text() == "1 250\n2 0\n3 1499\n"
    assert layout.read_frame_counts(path) == {1: 250, 2: 0, 3: 1499}
    path.write_text("1 250\n7 99\n3\n")
    parsed = layout.read_data_txt(path)
    assert parsed.counts == {1: 250, 2: 99}  # line 2 belongs to id 2 whatever its token [0]
    assert len(parsed.warnings) == 1 and "first token '7'" in parsed.warnings[0]
    assert len(parsed.errors) == 1 and "data.txt:3" in parsed.errors[0]
    with pytest.raises(ValueError, match="data.txt:3"):
        layout.read_frame_counts(path)
    with pytest.raises(FileNotFoundError, match="<id> <n_frames>"):
        layout.read_frame_counts(tmp_path / "absent.txt")
