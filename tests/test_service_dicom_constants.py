"""The DICOM node speaks in the libraries' names: SOP classes from pydicom / pynetdicom, statuses
from pynetdicom's tables, and they mean what the hand-typed numbers they replaced meant."""

from __future__ import annotations

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from fracsight.service import dicom_node  # noqa: E402
from fracsight.service.sender import delivered, worth_retrying  # noqa: E402


def test_the_node_answers_with_the_standard_codes() -> None:
    assert dicom_node.SUCCESS == 0x0000
    assert dicom_node.OUT_OF_RESOURCES == 0xA700
    assert dicom_node.NOT_AUTHORISED == 0x0124
    assert dicom_node.PROCESSING_FAILURE == 0x0110


def test_the_node_takes_radiographs_and_other_images_by_their_uids() -> None:
    assert "1.2.840.10008.5.1.4.1.1.1" in dicom_node.RADIOGRAPH_CLASSES  # CR
    assert "1.2.840.10008.5.1.4.1.1.1.1.1" in dicom_node.RADIOGRAPH_CLASSES  # DX for processing
    assert "1.2.840.10008.5.1.4.1.1.1.2" not in dicom_node.RADIOGRAPH_CLASSES  # mammography: no
    assert "1.2.840.10008.5.1.4.1.1.2" in dicom_node.OTHER_IMAGE_CLASSES  # CT: kept, refused
    assert len(dicom_node.RADIOGRAPH_CLASSES) == 9 and len(dicom_node.OTHER_IMAGE_CLASSES) == 10


@pytest.mark.parametrize(
    ("code", "kept", "retried"),
    [
        (0x0000, True, False),  # success
        (0x0001, True, False),  # warning: requested optional attributes not supported
        (0x0107, True, False),  # warning: attribute list error
        (0xB000, True, False),  # warning: coercion of data elements
        (0xB007, True, False),  # warning: data set does not match SOP class
        (0xA700, False, True),  # out of resources: try again later
        (0xA7FF, False, True),
        (0xA900, False, False),  # data set does not match SOP class: refused
        (0xC000, False, False),  # cannot understand: refused
        (0x0110, False, False),  # processing failure: refused
        (0x0124, False, False),  # not authorised: refused
    ],
)
def test_the_sender_reads_a_status_by_its_category(code: int, kept: bool, retried: bool) -> None:
    assert delivered(code) is kept
    assert worth_retrying(code) is retried
