-- A generated server secret, used only when HUB_SECRET is not configured, so that OTP hashes
-- (keyed by the secret) stay verifiable across restarts. Configure HUB_SECRET in production:
-- a secret kept next to the data does not protect against a database dump.
CREATE TABLE server_secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL CHECK (length(value) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
