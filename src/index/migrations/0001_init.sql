-- pacsd index, migration 1: typed patient/study/series/instance tables with the PS3.4 Annex C
-- key attributes, precomputed counts, the change log (HA replication stream) and the repair
-- queue. Text values are stored decoded (UTF-8) as the data set's Specific Character Set gave them.

CREATE TABLE patient (
    id                      INTEGER PRIMARY KEY,
    patient_id              TEXT NOT NULL,           -- (0010,0020), '' when absent
    issuer_of_patient_id    TEXT NOT NULL DEFAULT '',-- (0010,0021)
    patient_name            TEXT,                    -- (0010,0010)
    patient_birth_date      TEXT,                    -- (0010,0030)
    patient_sex             TEXT,                    -- (0010,0040)
    num_studies             INTEGER NOT NULL DEFAULT 0,
    num_series              INTEGER NOT NULL DEFAULT 0,
    num_instances           INTEGER NOT NULL DEFAULT 0,
    UNIQUE (patient_id, issuer_of_patient_id)
);

CREATE TABLE study (
    id                      INTEGER PRIMARY KEY,
    patient_fk              INTEGER NOT NULL REFERENCES patient(id),
    study_instance_uid      TEXT NOT NULL UNIQUE,    -- (0020,000D)
    study_date              TEXT,                    -- (0008,0020)
    study_time              TEXT,                    -- (0008,0030)
    accession_number        TEXT,                    -- (0008,0050)
    study_id                TEXT,                    -- (0020,0010)
    study_description       TEXT,                    -- (0008,1030)
    referring_physician_name TEXT,                   -- (0008,0090)
    modalities_in_study     TEXT NOT NULL DEFAULT '',-- (0008,0061), backslash-separated, sorted
    num_series              INTEGER NOT NULL DEFAULT 0,
    num_instances           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX study_patient ON study(patient_fk);
CREATE INDEX study_date_idx ON study(study_date);
CREATE INDEX study_accession ON study(accession_number);

CREATE TABLE series (
    id                      INTEGER PRIMARY KEY,
    study_fk                INTEGER NOT NULL REFERENCES study(id),
    series_instance_uid     TEXT NOT NULL UNIQUE,    -- (0020,000E)
    modality                TEXT,                    -- (0008,0060)
    series_number           INTEGER,                 -- (0020,0011)
    series_description      TEXT,                    -- (0008,103E)
    body_part_examined      TEXT,                    -- (0018,0015)
    series_date             TEXT,                    -- (0008,0021)
    series_time             TEXT,                    -- (0008,0031)
    num_instances           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX series_study ON series(study_fk);

CREATE TABLE instance (
    id                      INTEGER PRIMARY KEY,
    series_fk               INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid        TEXT NOT NULL UNIQUE,    -- (0008,0018)
    sop_class_uid           TEXT NOT NULL,           -- (0008,0016)
    instance_number         INTEGER,                 -- (0020,0013)
    number_of_frames        INTEGER,                 -- (0028,0008)
    rows                    INTEGER,                 -- (0028,0010)
    columns                 INTEGER,                 -- (0028,0011)
    specific_character_set  TEXT,                    -- (0008,0005)
    transfer_syntax_uid     TEXT NOT NULL,           -- as received
    storage_key             TEXT NOT NULL,
    size                    INTEGER NOT NULL,        -- bytes of the stored Part 10 file
    sha256                  TEXT NOT NULL,           -- hex SHA-256 of the stored Part 10 file
    calling_ae_title        TEXT,
    received_at             TEXT NOT NULL            -- RFC 3339 UTC
);
CREATE INDEX instance_series ON instance(series_fk);

-- Every committed change, in order; `seq` is the replication and catch-up position.
CREATE TABLE changelog (
    seq                     INTEGER PRIMARY KEY AUTOINCREMENT,
    at                      TEXT NOT NULL,
    kind                    TEXT NOT NULL,           -- 'instance'
    sop_instance_uid        TEXT NOT NULL,
    record                  TEXT NOT NULL            -- JSON of the indexed record
);

-- Replicas that missed a write; the repair worker copies from a good replica and clears it.
CREATE TABLE repair_queue (
    id                      INTEGER PRIMARY KEY,
    storage_key             TEXT NOT NULL,
    replica                 TEXT NOT NULL,
    reason                  TEXT NOT NULL,
    queued_at               TEXT NOT NULL,
    UNIQUE (storage_key, replica)
);
