"""Check pacsd's XML answers (PS3.19 Native DICOM Model) against DCMTK's dcm2xml: WADO-RS
instance metadata and a QIDO-RS search asked for as multipart/related;
type="application/dicom+xml" are split into their parts with Python's email parser, each
part parsed with xml.etree, and the instance's attributes compared one by one with what
`dcm2xml --native-format` writes for the very file that was stored. Then STOW-RS answers in
XML when asked to: STOW_FILE is sent to STOW_URL (stored) and again to OTHER_STUDY_URL (a
study it is not part of: refused), each with Accept: application/dicom+xml, by STOW_USER
(same password), and the receipts are parsed. Prints one JSON object; tests/dicomweb.rs
asserts on it. Any exception fails the run.

usage: xml_check.py METADATA_URL QIDO_URL FILE USER PASSWORD STOW_URL OTHER_STUDY_URL
                    STOW_FILE STOW_USER
"""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from email.parser import BytesParser

import requests

metadata_url, qido_url, path, user, password = sys.argv[1:6]
stow_url, other_study_url, stow_file, stow_user = sys.argv[6:10]
NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
XML = 'multipart/related; type="application/dicom+xml"'
seen = {}


def parts(rsp):
    """The parts of a multipart/related answer: (content type, bytes)."""
    head = b"Content-Type: " + rsp.headers["Content-Type"].encode() + b"\r\n\r\n"
    msg = BytesParser().parsebytes(head + rsp.content)
    assert msg.is_multipart(), rsp.headers["Content-Type"]
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.get_payload()]


def attributes(root, ns):
    """tag -> (vr, values) for the top level of a Native DICOM Model document; a person
    name is its Alphabetic components joined with ^, numbers are compared as numbers."""
    out = {}
    for a in root.findall(f"{ns}DicomAttribute"):
        tag, vr = a.get("tag"), a.get("vr")
        values = []
        for v in a.findall(f"{ns}Value"):
            text = v.text or ""
            values.append(float(text) if vr in ("DS", "IS", "US", "UL", "SS", "SL", "FL", "FD") else text)
        for pn in a.findall(f"{ns}PersonName"):
            alpha = pn.find(f"{ns}Alphabetic")
            comps = [] if alpha is None else [
                (alpha.findtext(f"{ns}{c}") or "")
                for c in ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")]
            values.append("^".join(comps).rstrip("^"))
        items = len(a.findall(f"{ns}Item"))
        bulk = a.find(f"{ns}BulkData") is not None or a.find(f"{ns}InlineBinary") is not None
        out[tag] = (vr, values, items, bulk, a.get("keyword"))
    return out


session = requests.Session()
session.auth = (user, password)

# WADO-RS instance metadata as XML, against dcm2xml of the stored file.
rsp = session.get(metadata_url, headers={"Accept": XML})
seen["metadata_status"] = rsp.status_code
seen["metadata_type"] = rsp.headers.get("Content-Type", "")
got = parts(rsp)
seen["metadata_parts"] = len(got)
seen["metadata_part_types"] = sorted({t for t, _ in got})
ours = attributes(ET.fromstring(got[0][1]), NS)
dcmtk_xml = subprocess.run(["dcm2xml", "--native-format", path], check=True,
                           capture_output=True).stdout
theirs_root = ET.fromstring(dcmtk_xml)
# dcm2xml may or may not write the namespace.
theirs = attributes(theirs_root, NS if theirs_root.tag.startswith(NS) else "")
theirs = {t: v for t, v in theirs.items() if not t.startswith("0002")}
# The archive adds Available Transfer Syntax UID (0008,3002) to metadata: not in the file.
seen["available_transfer_syntax"] = ours.pop("00083002", (None, [None]))[1][0]
seen["attributes_ours"] = len(ours)
seen["attributes_dcmtk"] = len(theirs)
diffs = []
for tag in sorted(set(ours) | set(theirs)):
    a, b = ours.get(tag), theirs.get(tag)
    if a is None or b is None:
        diffs.append({"tag": tag, "ours": a, "dcmtk": b})
        continue
    (vr_a, val_a, items_a, bulk_a, kw_a), (vr_b, val_b, items_b, bulk_b, kw_b) = a, b
    if bulk_a or bulk_b:
        # Pixel data and other large binaries: a BulkData reference here, inline or left
        # out there; compare only the VR.
        val_a = val_b = None
    if (vr_a, val_a, items_a, kw_a) != (vr_b, val_b, items_b, kw_b):
        diffs.append({"tag": tag, "ours": a, "dcmtk": b})
seen["diffs"] = diffs
seen["pixel_data_bulk_uri"] = (ET.fromstring(got[0][1])
                               .find(f"{NS}DicomAttribute[@tag='7FE00010']/{NS}BulkData")
                               .get("uri"))

# QIDO-RS as XML: one part per match.
rsp = session.get(qido_url, headers={"Accept": XML})
seen["qido_status"] = rsp.status_code
got = parts(rsp)
seen["qido_parts"] = len(got)
found = attributes(ET.fromstring(got[0][1]), NS)
seen["qido_study_uid"] = found["0020000D"][1][0]
seen["qido_patient_name"] = found["00100010"][1][0]
seen["qido_instances"] = found["00201208"][1][0]
# And the bare media type; with both offered, the one of higher quality.
def answer_type(accept):
    return session.get(qido_url, headers={"Accept": accept}).headers.get("Content-Type", "")


seen["qido_bare_xml_type"] = answer_type("application/dicom+xml")
seen["qido_json_preferred_type"] = answer_type(f"{XML}; q=0.5, application/dicom+json")
seen["qido_xml_preferred_type"] = answer_type(f"application/dicom+json; q=0.5, {XML}")
seen["qido_html_status"] = session.get(qido_url, headers={"Accept": "text/html"}).status_code


# STOW-RS receipts in XML: one Native DICOM Model document (not multipart).
def stow(url):
    with open(stow_file, "rb") as f:
        part = f.read()
    body = b"--xb\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--xb--\r\n"
    rsp = requests.post(url, data=body, auth=(stow_user, password), headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=xb',
        "Accept": "application/dicom+xml"})
    root = ET.fromstring(rsp.content)
    def item_values(seq):
        items = root.findall(f"{NS}DicomAttribute[@keyword='{seq}']/{NS}Item")
        return [{a.get("keyword"): a.findtext(f"{NS}Value") for a in i.findall(f"{NS}DicomAttribute")}
                for i in items]
    return {"status": rsp.status_code, "type": rsp.headers.get("Content-Type", ""),
            "root": root.tag.replace(NS, ""),
            "referenced": item_values("ReferencedSOPSequence"),
            "failed": item_values("FailedSOPSequence")}


seen["stow_stored"] = stow(stow_url)
seen["stow_refused"] = stow(other_study_url)
print(json.dumps(seen))
