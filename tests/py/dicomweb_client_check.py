"""Drive pacsd's DICOMweb side with the dicomweb-client package (PyPI), as an integration
program would: STOW, QIDO, WADO-RS (instances, metadata, frames with and without a media
type, bulk data, rendered, thumbnail). Prints one JSON object of what it saw; tests/dicomweb.rs
asserts on it. Any exception fails the run (non-zero exit).

usage: dicomweb_client_check.py URL USER PASSWORD TOKEN STUDY SERIES J2K_STUDY J2K_SERIES J2K_SOP NEW_FILE
"""

import json
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.auth import HTTPBasicAuth

(url, user, password, token, study, series, j2k_study, j2k_series, j2k_sop,
 new_file) = sys.argv[1:11]

basic = requests.Session()
basic.auth = HTTPBasicAuth(user, password)
client = DICOMwebClient(url=url, session=basic)
bearer = requests.Session()
bearer.headers["Authorization"] = f"Bearer {token}"
by_token = DICOMwebClient(url=url, session=bearer)
seen = {}


def uid(item, tag):
    return item[tag]["Value"][0]


# QIDO-RS
studies = client.search_for_studies()
seen["studies"] = sorted(uid(s, "0020000D") for s in studies)
seen["study_search_by_patient_wildcard"] = sorted(
    uid(s, "0020000D")
    for s in client.search_for_studies(search_filters={"PatientName": "Synthetic^Patient0095*"}))
seen["page_1"] = [uid(s, "0020000D") for s in client.search_for_studies(limit=1, offset=0)]
seen["page_2"] = [uid(s, "0020000D") for s in client.search_for_studies(limit=1, offset=1)]
with_fields = client.search_for_studies(
    search_filters={"StudyInstanceUID": study}, fields=["StudyDescription", "PatientSex"])
seen["includefield_description"] = with_fields[0]["00081030"]["Value"][0]
seen["series_of_study"] = sorted(uid(s, "0020000E") for s in client.search_for_series(study))
seen["instances_of_series"] = len(client.search_for_instances(study, series))
seen["all_instances_of_study"] = len(client.search_for_instances(study))
seen["modalities"] = studies[0]["00080061"]["Value"]
seen["series_count_is_number"] = isinstance(studies[0]["00201206"]["Value"][0], int)

# WADO-RS: instances, in the default syntax and as stored.
instances = client.search_for_instances(study, series)
sop = uid(instances[0], "00080018")
ds = client.retrieve_instance(study, series, sop)
seen["retrieved_sop"] = ds.SOPInstanceUID
seen["retrieved_syntax"] = str(ds.file_meta.TransferSyntaxUID)
# dicomweb-client asks for transfer-syntax=* by default: ask for Explicit VR Little Endian.
j2k_native = client.retrieve_instance(
    j2k_study, j2k_series, j2k_sop,
    media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
seen["j2k_default_syntax"] = str(j2k_native.file_meta.TransferSyntaxUID)
seen["j2k_default_pixels"] = len(j2k_native.PixelData)
j2k_stored = client.retrieve_instance(
    j2k_study, j2k_series, j2k_sop,
    media_types=(("application/dicom", "*"),))
seen["j2k_as_stored_syntax"] = str(j2k_stored.file_meta.TransferSyntaxUID)
seen["series_retrieved"] = len(client.retrieve_series(study, series))

# Metadata and bulk data.
metadata = client.retrieve_series_metadata(study, series)
seen["metadata_instances"] = len(metadata)
seen["metadata_rows"] = metadata[0]["00280010"]["Value"][0]
bulk_uri = metadata[0]["7FE00010"]["BulkDataURI"]
seen["bulk_uri_is_absolute"] = bulk_uri.startswith(url)
seen["bulk_bytes"] = len(client.retrieve_bulkdata(bulk_uri)[0])
seen["study_metadata_instances"] = len(client.retrieve_study_metadata(study))

# Frames: native without a media type; compressed as stored (image/jp2) and decoded.
seen["native_frame_bytes"] = len(client.retrieve_instance_frames(study, series, sop, [1])[0])
jp2 = client.retrieve_instance_frames(
    j2k_study, j2k_series, j2k_sop, [1], media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),))
seen["j2k_frame_is_codestream"] = jp2[0][:4].hex()
decoded = client.retrieve_instance_frames(
    j2k_study, j2k_series, j2k_sop, [1], media_types=(("application/octet-stream", "*"),))
seen["j2k_frame_stored_bytes"] = len(decoded[0])
native = client.retrieve_instance_frames(
    j2k_study, j2k_series, j2k_sop, [1], media_types=("application/octet-stream",))
seen["j2k_frame_decoded_bytes"] = len(native[0])

# Rendered and thumbnail.
jpeg = client.retrieve_instance_rendered(study, series, sop, media_types=("image/jpeg",))
seen["rendered_jpeg"] = jpeg[:2].hex()
png = client.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
seen["rendered_png"] = png[:4].hex()
seen["series_rendered"] = client.retrieve_series_rendered(
    study, series, media_types=("image/jpeg",))[:2].hex()
frame_png = client.retrieve_instance_frames_rendered(
    j2k_study, j2k_series, j2k_sop, [1], media_types=("image/png",))
seen["frame_rendered_png"] = frame_png[:4].hex()
# dicomweb-client has no thumbnail call: the same session, by hand.
thumb = basic.get(f"{url}/studies/{study}/series/{series}/thumbnail",
                  headers={"Accept": "image/jpeg"})
seen["thumbnail"] = [thumb.status_code, thumb.headers.get("Content-Type"), thumb.content[:2].hex()]

# STOW-RS with a bearer token, then found by QIDO and retrieved.
new = pydicom.dcmread(new_file)
stored = by_token.store_instances([new])
seen["stow_referenced"] = [
    item.ReferencedSOPInstanceUID for item in stored.get("ReferencedSOPSequence", [])]
seen["stow_failed"] = len(stored.get("FailedSOPSequence", []))
found = by_token.search_for_instances(search_filters={"SOPInstanceUID": new.SOPInstanceUID})
seen["stowed_found"] = len(found)
back = by_token.retrieve_instance(
    new.StudyInstanceUID, new.SeriesInstanceUID, new.SOPInstanceUID,
    media_types=(("application/dicom", "*"),))
seen["stowed_pixels_equal"] = back.PixelData == new.PixelData

# Bulk data inside a sequence: an instance with an icon image (64x64, 8 bits) stored, then
# its icon's pixels fetched by the BulkDataURI that the instance's metadata gives.
with_icon = pydicom.dcmread(new_file)
with_icon.SOPInstanceUID = pydicom.uid.generate_uid()
with_icon.file_meta.MediaStorageSOPInstanceUID = with_icon.SOPInstanceUID
icon = pydicom.Dataset()
icon.SamplesPerPixel = 1
icon.PhotometricInterpretation = "MONOCHROME2"
icon.Rows = icon.Columns = 64
icon.BitsAllocated = icon.BitsStored = 8
icon.HighBit = 7
icon.PixelRepresentation = 0
icon_pixels = bytes((x * 7 + y * 3) % 256 for y in range(64) for x in range(64))
icon.add_new(0x7FE00010, "OB", icon_pixels)
with_icon.IconImageSequence = pydicom.Sequence([icon])
by_token.store_instances([with_icon])
icon_metadata = client.retrieve_instance_metadata(
    with_icon.StudyInstanceUID, with_icon.SeriesInstanceUID, with_icon.SOPInstanceUID)
icon_uri = icon_metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
seen["icon_bulk_uri"] = icon_uri
seen["icon_bulk_equal"] = client.retrieve_bulkdata(icon_uri)[0] == icon_pixels

print(json.dumps(seen))
