-- pacsd index, migration 3: the HA epoch each change-log row was committed in, so that a
-- rejoining node can tell whether its history is a prefix of the primary's.
ALTER TABLE changelog ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
