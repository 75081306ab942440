-- Drivers sign in with their phone number. Two drivers must never share one, compared by
-- digits only (so "+49 30 555 1001" and "+49 (30) 5551001" are the same number). Drivers
-- without a phone (empty, or no digits) are not constrained: NULLs are distinct.
-- If this fails on an existing database, two drivers share a phone: fix one of them first.
CREATE UNIQUE INDEX drivers_phone_digits_idx
    ON drivers ((NULLIF(regexp_replace(phone, '[^0-9]', '', 'g'), '')));
