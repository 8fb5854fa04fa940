//! The roles a user may have: a fixed vocabulary that the file names (`auth.roles`, routes'
//! `roles`) and that `auth` stores. Parsing a stored or typed name (`FromStr`) is
//! `auth::users`'s, with its error type.

/// What a user may do; stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A patient.
    Patient,
    /// A doctor.
    Doctor,
    /// Staff of an institution.
    Institution,
    /// A gateway administrator.
    Admin,
}

impl Role {
    /// Every role, in the order they are listed to people.
    pub const ALL: [Role; 4] = [Role::Patient, Role::Doctor, Role::Institution, Role::Admin];

    /// The stored and serialized name: `patient`, `doctor`, `institution` or `admin`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Doctor => "doctor",
            Role::Institution => "institution",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
