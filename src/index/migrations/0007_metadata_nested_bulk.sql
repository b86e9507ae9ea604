-- pacsd index, migration 7: the WADO-RS metadata computed before this version left bulk data
-- inside sequence items (an icon image, a LUT in a sequence) with its VR only; it now has a
-- BulkDataURI there too. The kept metadata is derived data, rebuilt when missing: forgetting
-- it has every instance's metadata made again, with those URIs, on its first request.
DELETE FROM instance_metadata;
