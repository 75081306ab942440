-- Login codes expire (HUB_LOGIN_CODE_TTL_D, rotated by an admin), and expired sessions are
-- swept. Codes issued before this migration were 6 digits; they expire 30 days from now so
-- that every account moves to the longer codes that docs/security.md's arithmetic assumes.
ALTER TABLE shops ADD COLUMN login_code_expires_at timestamptz;
ALTER TABLE drivers ADD COLUMN login_code_expires_at timestamptz;
UPDATE shops SET login_code_expires_at = now() + interval '30 days';
UPDATE drivers SET login_code_expires_at = now() + interval '30 days';
ALTER TABLE shops ALTER COLUMN login_code_expires_at SET NOT NULL;
ALTER TABLE drivers ALTER COLUMN login_code_expires_at SET NOT NULL;

-- The session sweeper deletes by expiry.
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
