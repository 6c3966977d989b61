-- Look-alike usernames within ASCII: every live account's skeleton, the
-- name with look-alike characters made equal (src/server/username.rs,
-- `skeleton`: 0→o; 1, i→l; m→rn; w→vv; _, -→.). Registration refuses a
-- name whose skeleton an account already has, checked in the transaction
-- that inserts it. Not UNIQUE: databases from before this rule may already
-- hold look-alike pairs, and those accounts keep working. Deleted accounts
-- (tombstones) have no skeleton, so their former names are free again.
ALTER TABLE users ADD COLUMN skeleton TEXT;

UPDATE users
SET skeleton = replace(replace(replace(replace(replace(replace(replace(
        username, '0', 'o'), '1', 'l'), 'i', 'l'), 'm', 'rn'), 'w', 'vv'), '_', '.'), '-', '.')
WHERE deleted_at IS NULL;

CREATE INDEX users_by_skeleton ON users(skeleton);
