//! Names of namespaces, collections and tables: they name objects and become parts of file keys
//! in buckets, so they are kept to characters that need no escaping anywhere.

/// Longest namespace or collection name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Checks a namespace or collection name: 1 to [`MAX_NAME_BYTES`] bytes of `A-Z a-z 0-9 _ - .`,
/// not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a name: 1 to {MAX_NAME_BYTES} bytes of letters, digits, '_', '-' \
             and '.', not starting with '.'"
        ))
    }
}
