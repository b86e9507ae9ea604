#!/usr/bin/env bash
# Send the same C-FIND queries (DCMTK findscu) to pacsd and to Orthanc holding the same corpus,
# and print every difference in their answers. The differences found are explained in
# conformance/statement.md, section 5A.6.
#
# Usage: scripts/compare-find-orthanc.sh
# Needs: dcmtk and orthanc from Debian's packages (installed if missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need storescu:dcmtk Orthanc:orthanc
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir compare-find-orthanc

# Corpus: 12 studies x 2 series x 3 images, plus one Latin-1 and one UTF-8 patient name.
$PACSD synth -o "$WORK/corpus" --studies 12 --series 2 --per-study 3 --size 0 --first-study 100 >/dev/null
dcmodify -nb -i "(0008,0005)=ISO_IR 100" -i "(0010,0010)=$(printf 'M\xfcller^J\xfcrgen')" -i "(0010,0020)=PLATIN1" "$WORK"/corpus/100/*.dcm
dcmodify -nb -i "(0008,0005)=ISO_IR 192" -i "(0010,0010)=Dvořák^Antonín" -i "(0010,0020)=PUTF8" "$WORK"/corpus/101/*.dcm

PP=$(free_port); PO=$(free_port)
pacsd_config_file "$WORK/pacsd.toml" "$WORK/p" "$PP" 1 "$FIND_NODE"
cat >"$WORK/orthanc.json" <<EOF
{ "Name": "compare", "StorageDirectory": "$WORK/o/storage", "IndexDirectory": "$WORK/o/index",
  "DicomAet": "ORTHANC", "DicomPort": $PO, "HttpServerEnabled": false, "HttpPort": $(free_port),
  "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowFind": true, "Plugins": [], "SaveJobs": false }
EOF
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)
Orthanc "$WORK/orthanc.json" >"$WORK/orthanc.log" 2>&1 & PIDS+=($!)
wait_echo PACSD "$PP"; wait_echo ORTHANC "$PO"
storescu -aec PACSD +sd +r 127.0.0.1 "$PP" "$WORK/corpus"
storescu -aec ORTHANC +sd +r 127.0.0.1 "$PO" "$WORK/corpus"

R=2.25.61171899517253458302
QUERIES=(
  "study-universal|-S|QueryRetrieveLevel=STUDY|StudyInstanceUID|PatientID|PatientName|StudyDate|AccessionNumber"
  "study-patientid|-S|QueryRetrieveLevel=STUDY|PatientID=PAT00103|StudyInstanceUID|StudyDescription"
  "study-name-wildcard|-S|QueryRetrieveLevel=STUDY|PatientName=Synthetic^Patient0010?|PatientID"
  "study-name-lowercase|-S|QueryRetrieveLevel=STUDY|PatientName=synthetic^patient00105|PatientID"
  "study-date-range|-S|QueryRetrieveLevel=STUDY|StudyDate=20050410-20050415|PatientID|StudyDate"
  "study-date-open|-S|QueryRetrieveLevel=STUDY|StudyDate=-20050412|PatientID"
  "study-uid-list|-S|QueryRetrieveLevel=STUDY|StudyInstanceUID=$R.102\\$R.104|PatientID"
  "study-counts|-S|QueryRetrieveLevel=STUDY|PatientID=PAT00106|ModalitiesInStudy|NumberOfStudyRelatedSeries|NumberOfStudyRelatedInstances|SOPClassesInStudy"
  "study-modalities|-S|QueryRetrieveLevel=STUDY|ModalitiesInStudy=MR|PatientID"
  "study-latin1|-S|QueryRetrieveLevel=STUDY|SpecificCharacterSet=ISO_IR 100|PatientID=PLATIN1|PatientName"
  "study-utf8|-S|QueryRetrieveLevel=STUDY|SpecificCharacterSet=ISO_IR 192|PatientName=Dvo*|PatientID"
  "series|-S|QueryRetrieveLevel=SERIES|StudyInstanceUID=$R.107|SeriesInstanceUID|Modality|NumberOfSeriesRelatedInstances"
  "image|-S|QueryRetrieveLevel=IMAGE|StudyInstanceUID=$R.107|SeriesInstanceUID=$R.107.2|SOPInstanceUID|InstanceNumber"
  "patient|-P|QueryRetrieveLevel=PATIENT|PatientID=PAT0010*|PatientName|NumberOfPatientRelatedStudies|NumberOfPatientRelatedInstances"
  "patient-study|-P|QueryRetrieveLevel=STUDY|PatientID=PAT00108|StudyInstanceUID|StudyDate"
  "no-level|-S|PatientName=Synth*"
  "key-below-level|-S|QueryRetrieveLevel=STUDY|Modality=CT"
  "missing-study-uid|-S|QueryRetrieveLevel=SERIES|Modality=CT"
)
run() { # aet port flag keys...
    local aet=$1 port=$2 flag=$3; shift 3
    local args=()
    for k in "$@"; do args+=(-k "$k"); done
    findscu -v "$flag" "${args[@]}" -aec "$aet" 127.0.0.1 "$port" 2>&1 || true
}
DIFFS=0
for q in "${QUERIES[@]}"; do
    IFS='|' read -r -a parts <<<"$q"
    name=${parts[0]}; flag=${parts[1]}; keys=("${parts[@]:2}")
    run PACSD "$PP" "$flag" "${keys[@]}" >"$WORK/$name.pacsd"
    run ORTHANC "$PO" "$flag" "${keys[@]}" >"$WORK/$name.orthanc"
    if ! python3 - "$WORK/$name.pacsd" "$WORK/$name.orthanc" "$name" <<'PY'
import re, sys
def parse(path):
    # Values are compared as text, decoded with each response's own SpecificCharacterSet
    # (Orthanc adds ISO_IR 100 to every answer; pacsd adds a set only when one is needed).
    blocks, status, cur = [], None, None
    for raw in open(path, 'rb').read().split(b'\n'):
        line = raw.decode('latin-1')
        if 'Find Response:' in line and 'Pending' in line:
            cur = {}; blocks.append(cur)
        elif 'Received Final Find Response' in line:
            status = line.split('(', 1)[-1].rstrip(')') if '(' in line else line
            cur = None
        elif cur is not None:
            m = re.search(r'\(([0-9a-f]{4},[0-9a-f]{4})\) (\w\w) (.*?)\s+#', line)
            if m:
                cur[m.group(1)] = m.group(3).strip().strip('[]').rstrip('\x00 ').encode('latin-1')
    out = []
    for b in blocks:
        cs = b.pop('0008,0005', b'').decode()
        b.pop('0008,0054', None)   # RetrieveAETitle differs by design
        enc = 'utf-8' if 'ISO_IR 192' in cs else 'latin-1'
        out.append(tuple(sorted((k, v.decode(enc, 'replace')) for k, v in b.items())))
    return sorted(out), status
p, o = parse(sys.argv[1]), parse(sys.argv[2])
if p == o:
    print(f"same      {sys.argv[3]}: {len(p[0])} matches, {p[1]}")
    sys.exit(0)
print(f"DIFFERENT {sys.argv[3]}: pacsd {len(p[0])} matches ({p[1]}), Orthanc {len(o[0])} matches ({o[1]})")
ps, os_ = set(p[0]), set(o[0])
for b in sorted(ps - os_)[:3]: print("   only pacsd:  ", dict(b))
for b in sorted(os_ - ps)[:3]: print("   only Orthanc:", dict(b))
sys.exit(1)
PY
    then DIFFS=$((DIFFS + 1)); fi
done
echo "$DIFFS of ${#QUERIES[@]} queries answered differently (explained in conformance/statement.md 5A.6)"
