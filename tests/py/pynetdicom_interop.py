"""pynetdicom against a running pacsd: C-ECHO, C-GET with SCP/SCU role selection and a
relational C-FIND (extended negotiation). Prints one JSON object with what it saw; the Rust
test (tests/interop.rs) asserts on it.

usage: pynetdicom_interop.py PORT STUDY_UID SOP_UID
"""
import json
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

port, study, sop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}

# C-ECHO
ae = AE(ae_title="PYNET")
ae.add_requested_context(Verification)
assoc = ae.associate("127.0.0.1", port, ae_title="PACSD")
out["echo_established"] = assoc.is_established
if assoc.is_established:
    out["echo_status"] = assoc.send_c_echo().Status
    assoc.release()

# C-GET of the study: the node sends C-STOREs back on this association (PS3.4 C.4.3), which
# needs the role selection reply in the A-ASSOCIATE-AC.
received = []


def on_store(event):
    received.append(str(event.request.AffectedSOPInstanceUID))
    return 0x0000


ae = AE(ae_title="PYNET")
ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
ae.add_requested_context(CTImageStorage)
assoc = ae.associate(
    "127.0.0.1",
    port,
    ae_title="PACSD",
    ext_neg=[build_role(CTImageStorage, scp_role=True)],
    evt_handlers=[(evt.EVT_C_STORE, on_store)],
)
out["get_established"] = assoc.is_established
if assoc.is_established:
    roles = assoc.acceptor.role_selection
    out["get_role_reply"] = CTImageStorage in roles and bool(roles[CTImageStorage].scp_role)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    final = None
    for status, _identifier in assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet):
        if status is not None and "Status" in status:
            final = status.Status
            if final == 0x0000:
                out["get_completed"] = status.get("NumberOfCompletedSuboperations")
    out["get_status"] = final
    assoc.release()
out["get_received"] = sorted(received)

# Relational C-FIND (extended negotiation byte 1): an IMAGE-level query by SOP Instance UID
# alone, without the Study and Series Instance UIDs a hierarchical query needs.
ext = SOPClassExtendedNegotiation()
ext.sop_class_uid = StudyRootQueryRetrieveInformationModelFind
ext.service_class_application_information = b"\x01"
ae = AE(ae_title="PYNET")
ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
assoc = ae.associate("127.0.0.1", port, ae_title="PACSD", ext_neg=[ext])
out["find_established"] = assoc.is_established
if assoc.is_established:
    agreed = assoc.acceptor.sop_class_extended.get(StudyRootQueryRetrieveInformationModelFind)
    out["find_relational_agreed"] = agreed is not None and agreed[:1] == b"\x01"
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = ""
    matches, final = [], None
    for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        final = status.Status if status is not None and "Status" in status else None
        if identifier is not None and final in (0xFF00, 0xFF01):
            matches.append(str(identifier.StudyInstanceUID))
    out["find_status"] = final
    out["find_matches"] = matches
    assoc.release()

print(json.dumps(out))
