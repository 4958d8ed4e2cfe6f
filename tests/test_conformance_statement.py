"""docs/conformance.md against the code: its tables of SOP classes, transfer syntaxes, statuses,
association rejections, configuration keys and SR codes must say what the node accepts and sends.

The node's side is read from the running objects (the Storage SCP's presentation contexts, a real
association the sender requests, real rejected associations), not from constants copied here, so
a change to what the node accepts fails this test until the statement says it too."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from pydicom.uid import UID  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

from fracsight.service import dicom_node, dicom_results  # noqa: E402
from fracsight.service.config import SCHEMA  # noqa: E402
from fracsight.service.settings import Destination, DicomSettings, Peer  # noqa: E402

STATEMENT = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def _tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(the paragraph just above, header cells, rows) of every markdown table; cells without backticks."""
    found = []
    lead: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                row = _cells(lines[i])
                assert len(row) == len(header), f"{STATEMENT.name}: row {row} has {len(row)} cells"
                rows.append(row)
                i += 1
            found.append((" ".join(lead), header, rows))
            lead = []
            continue
        if line.strip():  # a paragraph's lines; a blank line ends it, the next one starts a new one
            lead = [*lead, line] if i and lines[i - 1].strip() else [line]
        i += 1
    return found


def _cells(line: str) -> list[str]:
    return [c.strip().strip("`") for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def tables():
    return _tables(STATEMENT.read_text())


def _table(tables, first_column: str, *also: str, lead: str = "") -> list[dict[str, str]]:
    """The one table whose header starts with ``first_column``, has the columns ``also`` and whose
    lead-in paragraph says ``lead``."""
    chosen = [
        (h, rows)
        for above, h, rows in tables
        if h[0] == first_column and set(also) <= set(h) and lead in above
    ]
    assert len(chosen) == 1, f"{len(chosen)} tables headed {first_column!r} with {also} after {lead!r}"
    header, rows = chosen[0]
    return [dict(zip(header, row, strict=True)) for row in rows]


def _paste(uids) -> str:
    """Rows to paste into the statement for what it lacks (the name as pydicom gives it)."""
    return "\n".join(f"| {UID(u).name} | `{u}` |" for u in sorted(uids))


@pytest.fixture(scope="module")
def scp():
    settings = DicomSettings(port=0, allow=(Peer("MODALITY"),))
    return dicom_node.StorageSCP(None, settings)


def test_the_scp_sop_classes_are_those_the_node_accepts(tables, scp) -> None:
    rows = _table(tables, "SOP Class Name", "SOP Class UID", "Provider of Service (SCP)")
    documented = {r["SOP Class UID"] for r in rows if r["Provider of Service (SCP)"] == "Yes"}
    accepted = {str(c.abstract_syntax) for c in scp.ae.supported_contexts}
    assert documented == accepted, (
        f"accepted, not in the statement:\n{_paste(accepted - documented)}\n"
        f"in the statement, not accepted:\n{_paste(documented - accepted)}"
    )
    for row in rows:
        assert UID(row["SOP Class UID"]).name == row["SOP Class Name"], row


def test_the_analysed_classes_are_the_radiographs(tables) -> None:
    radiographs = getattr(dicom_node, "RADIOGRAPH_CLASSES", None)
    if radiographs is None:
        pytest.skip("the node names no radiograph classes")
    rows = _table(tables, "SOP Class Name", "Analysed")
    analysed = {r["SOP Class UID"] for r in rows if r["Analysed"] == "Yes"}
    assert analysed == {str(u) for u in radiographs}


def test_the_transfer_syntaxes_accepted_are_those_of_every_context(tables, scp) -> None:
    storage_rows = _table(tables, "Preference", "Transfer Syntax UID")
    storage = [r["Transfer Syntax UID"] for r in storage_rows]
    assert [r["Preference"] for r in storage_rows] == [str(i + 1) for i in range(len(storage))]
    verification_rows = _table(tables, "Transfer Syntax Name", lead="Verification is accepted")
    verification = [r["Transfer Syntax UID"] for r in verification_rows]
    for context in scp.ae.supported_contexts:
        offered = [str(t) for t in context.transfer_syntax]
        expected = verification if context.abstract_syntax == Verification else storage
        assert offered == expected, f"{UID(context.abstract_syntax).name}: {offered}"
    for _, header, rows in tables:
        if "Transfer Syntax UID" in header:
            uid, name = header.index("Transfer Syntax UID"), header.index("Transfer Syntax Name")
            for row in rows:
                assert UID(row[uid]).name == row[name], row


def test_the_classes_sent_are_the_result_objects(tables) -> None:
    overview = _table(tables, "SOP Class Name", "User of Service (SCU)")
    users = {r["SOP Class UID"] for r in overview if r["User of Service (SCU)"] == "Yes"}
    sent = {r["SOP Class UID"] for r in _table(tables, "SOP Class Name", "Content")}
    made = {str(dicom_results.SC_CLASS), str(dicom_results.SR_CLASS), str(dicom_results.GSPS_CLASS)}
    assert users == sent == made


def test_the_sender_proposes_the_documented_transfer_syntaxes(tables, tmp_path: Path) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from fracsight.service.sender import Sender
    from fracsight.service.sends import Send
    from fracsight.service.store import SqliteStore

    requested: list = []
    pacs = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts:
        pacs.add_supported_context(context.abstract_syntax)
    done = threading.Event()

    def on_requested(event) -> None:
        requested.extend(event.assoc.requestor.requested_contexts)
        done.set()

    handlers = [(evt.EVT_REQUESTED, on_requested)]
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        port = server.server_address[1]
        destination = Destination("PACS", "127.0.0.1", port)
        settings = DicomSettings(port=0, allow=(Peer("PACS"),), forward=destination)
        store = SqliteStore(tmp_path)
        kinds = {"sc": dicom_results.SC_CLASS, "sr": dicom_results.SR_CLASS, "gsps": dicom_results.GSPS_CLASS}
        sends = [  # files that are not there: the association is made, then each send is refused
            Send(i, "none", str(destination), kind, "absent.dcm", str(uid), f"2.25.{i}", "sending", 0, 0.0,
                 None, "", None)
            for i, (kind, uid) in enumerate(kinds.items())
        ]  # fmt: skip
        Sender(store, settings)._deliver(str(settings.forward), sends)
        assert done.wait(10)
    finally:
        server.shutdown()
    expected = [
        r["Transfer Syntax UID"] for r in _table(tables, "Transfer Syntax Name", lead="It proposes one")
    ]
    assert {str(c.abstract_syntax) for c in requested} == {str(s.sop_class_uid) for s in sends}
    for context in requested:
        assert [str(t) for t in context.transfer_syntax] == expected


def test_the_storage_statuses_are_those_the_scp_answers(tables) -> None:
    rows = _table(tables, "Status", "Code")
    documented = {int(r["Code"], 16) for r in rows}
    answered = {dicom_node.SUCCESS, dicom_node.OUT_OF_RESOURCES, dicom_node.NOT_AUTHORISED,
                dicom_node.PROCESSING_FAILURE}  # fmt: skip
    assert documented == answered


def test_the_rejections_are_those_a_peer_gets(tables, scp) -> None:
    from pynetdicom import AE

    rows = _table(tables, "Check", "Rejection (result, source, reason)")
    triples = [re.search(r"\((\d), (\d), (\d)\)", r["Rejection (result, source, reason)"]) for r in rows]
    documented = {tuple(int(n) for n in found.groups()) for found in triples}
    scp.start()
    try:
        got = set()
        for calling, called in (("MODALITY", "ELSEWHERE"), ("STRANGER", scp.settings.aet)):
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", scp.port, ae_title=called)
            assert assoc.is_rejected
            answer = assoc.acceptor.primitive
            got.add((answer.result, answer.result_source, answer.diagnostic))
    finally:
        scp.stop()
    assert got == {(1, 1, 7), (1, 1, 3)} and got <= documented
    assert (2, 3, 2) in documented  # pynetdicom's answer beyond maximum_associations (local limit exceeded)


def test_the_configuration_keys_are_those_the_file_takes(tables) -> None:
    rows = _table(tables, "Key", "Default", "Meaning")
    assert [r["Key"] for r in rows] == list(SCHEMA["dicom"])


def test_the_sr_codes_are_those_the_sr_uses(tables) -> None:
    rows = _table(tables, "Code Value", "Coding Scheme Designator", "Code Meaning")
    documented = {(r["Code Value"], r["Coding Scheme Designator"], r["Code Meaning"]) for r in rows}
    r = dicom_results
    concepts = [r.RADIOGRAPHY, r.FRACTURE, r.PROBABILITY, r.NO_UNITS, r.CATEGORY, r.STUDY_CATEGORY,
                *r.OPERATING_POINTS.values(), *r.CATEGORY_CODES.values()]  # fmt: skip
    used = {(c.value, c.scheme_designator, c.meaning) for c in concepts}
    assert documented == used, f"missing: {used - documented}; not used: {documented - used}"
