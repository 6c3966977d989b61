-- Disappearing messages (PROTOCOL §21): when each entry expires (Unix ms,
-- from the verified timer in force at its position), so expired entries
-- are replaced by "message expired" before anything is read back. NULL:
-- never. Readable on disk like `ts`: it says no more than `ts` and the
-- room's timer.
ALTER TABLE entries ADD COLUMN expires INTEGER;
CREATE INDEX entries_by_expiry ON entries (server, expires) WHERE expires IS NOT NULL;
