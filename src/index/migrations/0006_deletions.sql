-- pacsd index, migration 6: tombstones of deleted instances' objects (and of their previews).
-- A row is written in the same transaction that removes the instance's index rows, and stays
-- until every replica has lost the object, so that recovery from storage and a rebuild never
-- index a deleted instance again. A new store of the same key clears it.
CREATE TABLE deleted_object (
    storage_key      TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    deleted_at       TEXT NOT NULL
);
