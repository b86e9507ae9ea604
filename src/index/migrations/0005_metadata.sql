-- pacsd index, migration 5: the WADO-RS metadata (DICOM JSON) of each instance, computed once
-- (by the preview worker after ingest, or on the first metadata request) so that the metadata
-- of a series is one query. Derived data: not in the change log, rebuilt when missing.
CREATE TABLE instance_metadata (
    instance_fk INTEGER PRIMARY KEY REFERENCES instance(id) ON DELETE CASCADE,
    json        TEXT NOT NULL
);
