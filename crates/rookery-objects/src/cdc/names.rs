//! Namespace and collection names. A processor's object is named `<namespace>/<collection>` and
//! a catalog's `<namespace>`; both names become parts of the delta files' keys, so they are
//! kept to characters that need no escaping anywhere.

pub use crate::names::check_name;

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
