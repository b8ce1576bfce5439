//! Instance identity: short ids that are unique forever, and operator-chosen names.
//!
//! Ids are 10 characters of lowercase base-36 drawn at random (about 51 bits), checked against
//! the store so a collision is retried rather than trusted away. Names follow PRODUCT.md:
//! `[a-z0-9][a-z0-9_-]{0,62}`, unique among live instances.

use rand::Rng;

const ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 10;

/// A fresh random instance id.
pub fn new_id() -> String {
    let mut rng = rand::rng();
    (0..ID_LEN)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

/// Checks a name against `[a-z0-9][a-z0-9_-]{0,62}`; the error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "name {name:?} is {} characters long; the limit is 63",
            name.len()
        ));
    }
    let mut chars = name.chars();
    if let Some(first) = chars.next() {
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(format!(
                "name {name:?} must start with a lowercase letter or a digit"
            ));
        }
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "name {name:?} contains {bad:?}; allowed are a-z, 0-9, '_' and '-' (pattern [a-z0-9][a-z0-9_-]{{0,62}})"
        ));
    }
    Ok(())
}

/// Whether a reference looks like an id (so lookups can try the id first).
pub fn looks_like_id(r: &str) -> bool {
    r.len() == ID_LEN && r.bytes().all(|b| ID_ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_names_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(validate_name(&a).is_ok());
        assert!(looks_like_id(&a));
    }

    #[test]
    fn name_rules() {
        for ok in ["a", "0", "worker-1", "a_b-c", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a b",
            "a/b",
            "..",
            "é",
            &"x".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name("Worker")
            .unwrap_err()
            .contains("lowercase letter"));
        assert!(validate_name("a.b").unwrap_err().contains("'.'"));
    }
}
