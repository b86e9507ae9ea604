-- pacsd index, migration 9: the change-log position up to which every instance row is known to
-- be durable together with its object's copies. A small object's row may be committed before
-- its copies are flushed (one flush for both, on a node that runs alone); start-up checks the
-- rows after this position against storage. Every row before this migration was written after
-- its copies were flushed.
CREATE TABLE settled (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    seq INTEGER NOT NULL
);
INSERT INTO settled (id, seq) SELECT 0, coalesce(max(seq), 0) FROM changelog;
