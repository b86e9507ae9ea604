-- pacsd index, migration 4: the accounts of the HTTP side (DICOMweb, portal) and their API
-- tokens. Passwords are kept as argon2id PHC strings; a token only as its SHA-256 (a token is
-- 256 random bits, so a fast hash is enough and the token cannot be read back from here).
CREATE TABLE account (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    -- Comma-separated rights: read, upload, admin.
    rights        TEXT NOT NULL,
    created       TEXT NOT NULL
);
CREATE TABLE api_token (
    sha256  TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES account(name) ON DELETE CASCADE,
    label   TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX api_token_account ON api_token(account);
