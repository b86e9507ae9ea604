-- pacsd index, migration 10: a read check beside each object's digest. New objects get
-- "xxh3-128:" and 32 hex digits (storage::digest), which every read that serves the object
-- compares with; the digest (BLAKE3) stays what verification and repair compare with. Rows
-- recorded before keep NULL here and their reads are checked against the digest.
ALTER TABLE instance ADD COLUMN read_check TEXT;
