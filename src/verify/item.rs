//! One judged item of `check`: what was checked, passed or failed or unknown, why.
//! Every check file builds these; they sit below all of them.

use serde::Serialize;

/// One judged item.
#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    /// What was checked, as `check` prints it.
    pub name: String,
    /// Passed (false when failed or unknown).
    pub ok: bool,
    /// Could not be judged (what it depends on could not be read): neither passed
    /// nor failed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
    /// Why it failed, or a detail worth showing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl CheckItem {
    /// A judged item.
    pub fn new(name: &str, ok: bool, hint: Option<String>) -> CheckItem {
        CheckItem {
            name: name.to_string(),
            ok,
            unknown: false,
            hint,
        }
    }

    /// An item that could not be judged, with why.
    pub fn unknown(name: &str, why: &str) -> CheckItem {
        CheckItem {
            name: name.to_string(),
            ok: false,
            unknown: true,
            hint: Some(why.to_string()),
        }
    }

    /// `OK`, `FAILED` or `UNKNOWN`, as `check` prints it.
    pub fn state(&self) -> &'static str {
        match (self.ok, self.unknown) {
            (true, _) => "OK",
            (false, true) => "UNKNOWN",
            (false, false) => "FAILED",
        }
    }
}
