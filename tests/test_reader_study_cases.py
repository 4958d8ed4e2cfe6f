"""The reader-study plan and case list, without a service: orders from the seed, counterbalanced
arms, and what a case list may hold (several images per case, boxes, both truths)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fracsight.service.reader_study import (  # noqa: E402
    StudyError,
    first_arm,
    read_case_list,
    session_orders,
)


def test_orders_are_reproducible_from_the_seed_and_differ() -> None:
    orders = session_orders(42, 4, 30)
    assert orders == session_orders(42, 4, 30)
    assert orders != session_orders(43, 4, 30)
    flat = [tuple(o) for reader in orders for o in reader]
    assert len(set(flat)) == 8 and all(sorted(o) == list(range(30)) for o in flat)
    rng = np.random.default_rng(42)  # the documented draw: reader by reader, session 1 then 2
    assert orders[0][0] == rng.permutation(30).tolist() and orders[0][1] == rng.permutation(30).tolist()


def test_arms_alternate_across_readers() -> None:
    assert [first_arm(i) for i in range(4)] == ["unaided", "aided", "unaided", "aided"]


def test_case_list_with_several_images_and_boxes(tmp_path: Path) -> None:
    (tmp_path / "a1.png").write_bytes(b"x")
    (tmp_path / "cases.csv").write_text(
        "case,path,truth,region,box\n"
        'c1,a1.png,1,wrist,"[[1, 2, 30, 40]]"\n'
        "c1,/abs/a2.png,1,,\n"
        "c2,b.png,0,,\n"
    )
    cases = read_case_list(tmp_path / "cases.csv")
    assert [c.case_id for c in cases] == ["c1", "c2"]
    assert cases[0].paths == (tmp_path / "a1.png", Path("/abs/a2.png"))
    assert cases[0].region == "wrist" and json.loads(cases[0].boxes_of(0)) == [[1, 2, 30, 40]]
    assert cases[0].boxes_of(1) == "" and cases[1].truth == 0


@pytest.mark.parametrize(
    "rows, says",
    [
        ("c1,a.png,1,\nc1,b.png,0,\n", "truth differs"),
        ("c1,a.png,2,\n", "truth of 0 or 1"),
        ("c1,a.png,1,[[1,2]]\n", "not a JSON list"),
    ],
)
def test_bad_case_lists_say_which_line(tmp_path: Path, rows: str, says: str) -> None:
    (tmp_path / "cases.csv").write_text("case,path,truth,box\n" + rows)
    with pytest.raises(StudyError, match=says):
        read_case_list(tmp_path / "cases.csv")


def test_folder_without_truth_subfolders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "misc").mkdir()
    with pytest.raises(StudyError, match="fractured"):
        read_case_list(tmp_path)
