//! Which account a login names: the account id (a shop's for a vendor, a driver's), or for a
//! driver their phone number — people know their number, nobody knows a UUID. Also the rules
//! for a driver's phone number, shared with driver creation.

use uuid::Uuid;

use super::Hub;
use super::auth::LoginRequest;
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::store::accounts;

/// Most digits a phone number has (E.164), and the fewest we accept.
const MAX_PHONE_DIGITS: usize = 15;
const MIN_PHONE_DIGITS: usize = 3;

/// A login with its account resolved to an id.
#[derive(Debug)]
pub struct AccountLogin {
    pub role: Role,
    pub account_id: Uuid,
    pub code: String,
}

/// A phone number reduced to its digits: how drivers' numbers are compared (the unique index
/// `drivers_phone_digits_idx` normalizes the same way).
pub fn phone_digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// A driver's phone number as an admin may set it: digits with the usual separators.
pub fn check_driver_phone(phone: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_digit() || " +-().".contains(c);
    let digits = phone_digits(phone).len();
    if !phone.chars().all(allowed) || !(MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits) {
        return Err(Error::validation(format!(
            "phone must be {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits, optionally with + - ( ) . and spaces"
        )));
    }
    Ok(())
}

impl Hub {
    /// Turns a login request into the account it names. A phone number no driver has resolves
    /// to a random id, so the login goes on to cost one code verification and fail like an
    /// unknown id: the answer never tells which numbers belong to drivers.
    pub async fn resolve_login(&self, req: LoginRequest) -> Result<AccountLogin> {
        let account_id = match (req.account_id, req.phone.as_deref()) {
            (Some(id), None) => id,
            (None, Some(phone)) => {
                if req.role != Role::Driver {
                    return Err(Error::validation(
                        "phone: only drivers sign in with a phone number; vendors use the shop id",
                    ));
                }
                let digits = phone_digits(phone);
                if phone.chars().count() > 32 || digits.len() < MIN_PHONE_DIGITS {
                    return Err(Error::validation("phone: not a phone number"));
                }
                accounts::driver_id_by_phone(&self.db, &digits)
                    .await?
                    .unwrap_or_else(Uuid::now_v7)
            }
            (Some(_), Some(_)) => {
                return Err(Error::validation("give account_id or phone, not both"));
            }
            (None, None) => return Err(Error::validation("account_id or phone is required")),
        };
        Ok(AccountLogin {
            role: req.role,
            account_id,
            code: req.code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_compare_by_digits() {
        assert_eq!(phone_digits("+49 (30) 555-1001"), "49305551001");
        assert_eq!(phone_digits("no digits"), "");
    }

    #[test]
    fn driver_phones_are_digits_with_separators() {
        assert!(check_driver_phone("+49 30 555 1001").is_ok());
        assert!(check_driver_phone("(030) 555.1001").is_ok());
        assert!(check_driver_phone("12").is_err());
        assert!(check_driver_phone("call me").is_err());
        assert!(check_driver_phone("+49 30 555 1001 ext 7").is_err());
        assert!(check_driver_phone("1234567890123456").is_err());
    }
}
