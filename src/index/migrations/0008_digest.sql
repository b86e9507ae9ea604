-- pacsd index, migration 8: an object's checksum column is `digest`, no longer `sha256`. New
-- objects are recorded with BLAKE3 ("blake3:" and 64 hex digits); rows recorded before keep
-- their SHA-256 (64 bare hex digits) and are checked with it. Nothing is rehashed.
ALTER TABLE instance RENAME COLUMN sha256 TO digest;
ALTER TABLE preview RENAME COLUMN sha256 TO digest;
