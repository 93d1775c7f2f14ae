import numpy as np
import pytest

from luna.luna16.candidates import CsvFormatError, matching_diameters
from tests.oracles import Candidate, load_candidates

UID_A = "1.2.3.100"
UID_B = "1.2.3.200"


def write(path, header, rows):
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


@pytest.fixture
def csvs(tmp_path):
    annotations = write(
        tmp_path / "annotations.csv",
        "seriesuid,coordX,coordY,coordZ,diameter_mm",
        [
            f"{UID_A},10.0,20.0,30.0,8.0",  # first in file order: wins ties
            f"{UID_A},10.5,20.0,30.0,12.0",
            f"{UID_B},-50.0,0.0,0.0,4.0",
        ],
    )
    candidates = write(
        tmp_path / "candidates.csv",
        "seriesuid,coordX,coordY,coordZ,class",
        [
            f"{UID_A},12.0,20.0,30.0,1",  # |dx| = 2 = 8/4: inside (inclusive) -> 8.0
            f"{UID_A},13.0,20.0,30.0,1",  # |dx| = 3 > 2 for the first, 2.5 <= 3 for the second -> 12.0
            f"{UID_A},10.0,20.0,40.0,0",  # far on z: 0.0
            f"{UID_B},-50.5,0.5,-0.5,0",  # within 1.0 of UID_B's: diameter joined, class stays 0
            f"{UID_B},99.0,0.0,0.0,0",
            "1.2.3.300,0.0,0.0,0.0,1",  # no annotation: positive with diameter 0
        ],
    )
    return annotations, candidates


def test_join_takes_first_annotation_within_a_quarter_diameter_on_every_axis(csvs):
    by_center = {c.center_xyz: c for c in load_candidates(*csvs)}
    assert by_center[(12.0, 20.0, 30.0)].diameter_mm == 8.0
    assert by_center[(13.0, 20.0, 30.0)].diameter_mm == 12.0
    assert by_center[(10.0, 20.0, 40.0)].diameter_mm == 0.0
    joined_negative = by_center[(-50.5, 0.5, -0.5)]
    assert joined_negative.diameter_mm == 4.0 and joined_negative.is_nodule is False
    assert by_center[(0.0, 0.0, 0.0)] == Candidate("1.2.3.300", (0.0, 0.0, 0.0), True, 0.0)


def test_order_is_descending_on_nodule_diameter_series_center(csvs):
    ordered = [(c.is_nodule, c.diameter_mm, c.series_uid, c.center_xyz) for c in load_candidates(*csvs)]
    assert ordered == sorted(ordered, reverse=True)
    assert [c[:2] for c in ordered] == [
        (True, 12.0),
        (True, 8.0),
        (True, 0.0),
        (False, 4.0),
        (False, 0.0),
        (False, 0.0),
    ]


def test_series_filter_keeps_only_given_series(csvs):
    kept = load_candidates(*csvs, series_uids={UID_B})
    assert {c.series_uid for c in kept} == {UID_B} and len(kept) == 2


def test_matching_diameter_is_inclusive_and_per_axis():
    annotations = (np.array([[0.0, 0.0, 0.0]]), np.array([4.0]))
    assert matching_diameters(np.array([[1.0, 1.0, 1.0]]), *annotations).tolist() == [4.0]
    assert matching_diameters(np.array([[1.0, 1.0, 1.0001]]), *annotations).tolist() == [0.0]


def test_missing_csv_names_the_expected_path(tmp_path, csvs):
    with pytest.raises(FileNotFoundError, match=r"candidates_V2\.csv"):
        load_candidates(csvs[0], tmp_path / "candidates_V2.csv")


def test_missing_column_names_file_line_and_column(tmp_path, csvs):
    bad = write(tmp_path / "bad.csv", "seriesuid,coordX,coordY,coordZ", [f"{UID_A},1,2,3"])
    with pytest.raises(CsvFormatError, match=r"bad\.csv, line 1: missing column\(s\) class"):
        load_candidates(csvs[0], bad)


def test_wrong_header_is_reported(tmp_path, csvs):
    bad = write(tmp_path / "annotations.csv", "series,x,y,z,d", [f"{UID_A},1,2,3,4"])
    with pytest.raises(
        CsvFormatError, match="missing column.*seriesuid, coordX, coordY, coordZ, diameter_mm"
    ):
        load_candidates(bad, csvs[1])


def test_non_numeric_value_names_file_line_and_column(tmp_path, csvs):
    bad = write(
        tmp_path / "cands.csv",
        "seriesuid,coordX,coordY,coordZ,class",
        [f"{UID_A},1,2,3,0", f"{UID_A},1,two,3,0"],
    )
    with pytest.raises(CsvFormatError, match=r"cands\.csv, line 3, column coordY: 'two' is not a number"):
        load_candidates(csvs[0], bad)


def test_bad_class_and_short_row_are_reported(tmp_path, csvs):
    bad = write(tmp_path / "cands.csv", "seriesuid,coordX,coordY,coordZ,class", [f"{UID_A},1,2,3,yes"])
    with pytest.raises(CsvFormatError, match=r"line 2, column class: 'yes' is not 0 or 1"):
        load_candidates(csvs[0], bad)
    short = write(tmp_path / "short.csv", "seriesuid,coordX,coordY,coordZ,class", [f"{UID_A},1,2,3"])
    with pytest.raises(CsvFormatError, match=r"short\.csv, line 2: expected 5 values, found 4"):
        load_candidates(csvs[0], short)
