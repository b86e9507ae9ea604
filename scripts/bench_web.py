"""The DICOMweb benchmark client of scripts/bench-web.sh: the same requests, with the same
client (requests, keep-alive), against one DICOMweb server; prints one JSON object of figures.

usage: bench_web.py BASE_URL USER PASSWORD BIG_STUDY BIG_SERIES MID_STUDY MID_SERIES STOW_DIR
(USER empty: no authentication)
"""

import base64
import http.client
import json
import urllib.parse
import os
import statistics
import subprocess
import sys
import time
import uuid

import requests

base, user, password, big_st, big_se, mid_st, mid_se, stow_dir = sys.argv[1:9]
session = requests.Session()
if user:
    session.auth = (user, password)
out = {}


def timed(fn, n):
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000)
    return times


def pct(times, p):
    s = sorted(times)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 2)


# Latency is measured over one persistent http.client connection (requests adds about half a
# millisecond of its own per call, which would hide the servers' difference).
url = urllib.parse.urlsplit(base)
conn = http.client.HTTPConnection(url.hostname, url.port)
auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} if user else {}


def get(path, accept=None, ok=(200,)):
    global conn
    for attempt in (1, 2):
        try:
            conn.request("GET", url.path + path, headers={**auth, **({"Accept": accept} if accept else {})})
            r = conn.getresponse()
            body = r.read()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # A server that closed an idle keep-alive connection (Orthanc does after a while).
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port)
            if attempt == 2:
                raise
    if r.status not in ok:
        raise RuntimeError(f"{path}: {r.status} {body[:200]}")
    return body


# QIDO-RS: a study search by Patient ID (one match out of the corpus), p50/p99.
patients = [f"PAT{n:05}" for n in range(100, 300)]
t = timed(lambda i: get(f"/studies?PatientID={patients[i % len(patients)]}"), 300)
out["qido_study_search_ms"] = {"p50": pct(t, 50), "p99": pct(t, 99)}
# QIDO-RS: every instance of the 600-instance series.
t = timed(lambda i: get(f"/studies/{big_st}/series/{big_se}/instances"), 20)
out["qido_instances_600_ms"] = {"p50": pct(t, 50), "p99": pct(t, 99)}
n = len(json.loads(get(f"/studies/{big_st}/series/{big_se}/instances")))
out["qido_instances_600_count"] = n

# Series metadata: the first request (cold), then warm.
for name, st, se in (("600", big_st, big_se), ("200", mid_st, mid_se)):
    t0 = time.perf_counter()
    md = json.loads(get(f"/studies/{st}/series/{se}/metadata", "application/dicom+json"))
    cold = (time.perf_counter() - t0) * 1000
    warm = timed(lambda i: get(f"/studies/{st}/series/{se}/metadata", "application/dicom+json"), 10)
    out[f"metadata_{name}_ms"] = {"cold": round(cold, 1), "warm_p50": pct(warm, 50), "instances": len(md)}

# WADO-RS: the whole 600-instance series as stored, MB/s (best of 3), received by curl (a
# Python client tops out near the figures measured here).
best = 0.0
for _ in range(3):
    cmd = ["curl", "-sf", "--no-progress-meter", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
           "-H", 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
           f"{base}/studies/{big_st}/series/{big_se}"]
    if user:
        cmd += ["-u", f"{user}:{password}"]
    size, took = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    best = max(best, int(size) / 1e6 / float(took))
out["wado_series_mb_s"] = round(best, 1)

# Frames: frame 1 of every instance of the series, by curl with 4 transfers at once (a Python
# client would be the bottleneck), frames/s.
sops = [i["00080018"]["Value"][0] for i in json.loads(get(f"/studies/{big_st}/series/{big_se}/instances"))]
cfg = os.path.join(stow_dir, "..", f"frames-{os.getpid()}.cfg")
with open(cfg, "w") as f:
    for sop in sops:
        f.write(f'url = "{base}/studies/{big_st}/series/{big_se}/instances/{sop}/frames/1"\noutput = "/dev/null"\n')
curl = ["curl", "-sf", "--no-progress-meter", "-Z", "--parallel-max", "4", "-K", cfg,
        "-H", 'Accept: multipart/related; type="application/octet-stream"; transfer-syntax=*']
if user:
    curl += ["-u", f"{user}:{password}"]
t0 = time.perf_counter()
subprocess.run(curl, check=True)
out["frames_per_s"] = round(len(sops) / (time.perf_counter() - t0), 1)

# Rendered (JPEG) and thumbnail, p50 over different instances.
t = timed(lambda i: get(f"/studies/{big_st}/series/{big_se}/instances/{sops[i * 7 % len(sops)]}/rendered",
                        "image/jpeg"), 30)
out["rendered_ms"] = {"p50": pct(t, 50), "p99": pct(t, 99)}
r = session.get(f"{base}/studies/{big_st}/series/{big_se}/instances/{sops[1]}/thumbnail",
                headers={"Accept": "image/jpeg"})
if r.status_code == 200:
    t = timed(lambda i: get(f"/studies/{big_st}/series/{big_se}/instances/{sops[i * 11 % len(sops)]}/thumbnail",
                            "image/jpeg"), 30)
    out["thumbnail_ms"] = {"p50": pct(t, 50), "p99": pct(t, 99)}
else:
    out["thumbnail_ms"] = f"not served ({r.status_code})"

# STOW-RS: every file of STOW_DIR in one request, MB/s.
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(stow_dir) for f in fs)
boundary = uuid.uuid4().hex
body = bytearray()
for f in files:
    body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body += open(f, "rb").read()
    body += b"\r\n"
body += f"--{boundary}--\r\n".encode()
t0 = time.perf_counter()
r = session.post(f"{base}/studies", data=bytes(body),
                 headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                          "Accept": "application/dicom+json"})
took = time.perf_counter() - t0
if r.status_code != 200:
    raise RuntimeError(f"STOW: {r.status_code} {r.text[:300]}")
out["stow_mb_s"] = round(len(body) / 1e6 / took, 1)
out["stow_instances"] = len(files)
print(json.dumps(out))
