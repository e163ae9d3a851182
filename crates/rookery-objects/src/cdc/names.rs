//! Namespace and collection names. A processor's object is named `<namespace>/<collection>` and
//! a catalog's `<namespace>`; both names become parts of the delta files' keys, so they are
//! kept to characters that need no escaping anywhere.

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

/// The namespace and collection of a processor named `<namespace>/<collection>`.
pub fn split_processor_name(name: &str) -> Result<(&str, &str), String> {
    let Some((namespace, collection)) = name.split_once('/') else {
        return Err(format!(
            "a CDC processor is named <namespace>/<collection>, not {name:?}"
        ));
    };
    check_name(namespace).map_err(|e| format!("namespace: {e}"))?;
    check_name(collection).map_err(|e| format!("collection: {e}"))?;
    Ok((namespace, collection))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(split_processor_name("shop/orders"), Ok(("shop", "orders")));
        assert!(split_processor_name("shop").is_err());
        assert!(split_processor_name("shop/a/b").is_err());
        assert!(split_processor_name("/orders").is_err());
        assert!(split_processor_name("shop/..").is_err());
        assert!(check_name("v1.2_x-y").is_ok());
        assert!(check_name(&"x".repeat(129)).is_err());
        assert!(check_name("a b").is_err());
    }
}
