-- pacsd index, migration 2: one preview row per instance. The row is created by a trigger in
-- the same transaction as the instance (so a preview is never forgotten across a restart) and
-- worked off by the render worker, off the C-STORE path.

CREATE TABLE preview (
    instance_fk             INTEGER PRIMARY KEY REFERENCES instance(id),
    -- 'pending': to render; 'done': stored under storage_key; 'none': the object has no
    -- pixel data; 'failed': its pixels could not be decoded (reason says why).
    state                   TEXT NOT NULL CHECK (state IN ('pending', 'done', 'none', 'failed')),
    storage_key             TEXT,                    -- `<...>/<SOPInstanceUID>.jpg` when done
    size                    INTEGER,
    sha256                  TEXT,
    reason                  TEXT,
    updated_at              TEXT NOT NULL
);
CREATE INDEX preview_pending ON preview(instance_fk) WHERE state = 'pending';
CREATE INDEX preview_key ON preview(storage_key) WHERE storage_key IS NOT NULL;

CREATE TRIGGER instance_preview AFTER INSERT ON instance
BEGIN
    INSERT INTO preview (instance_fk, state, updated_at)
    VALUES (new.id, 'pending', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- Instances indexed before this migration get a preview too.
INSERT INTO preview (instance_fk, state, updated_at)
SELECT id, 'pending', strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM instance;

-- Repair tasks look objects up by key.
CREATE INDEX instance_storage_key ON instance(storage_key);
