//! Route patterns as written in `rookery.toml` (`/counter/:name`): their parameters, and their
//! form in the router's syntax.

/// The parameter names of a route pattern.
pub(crate) fn params_of(pattern: &str) -> Vec<String> {
    pattern
        .split('/')
        .filter_map(|seg| {
            seg.strip_prefix(':')
                .or_else(|| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        })
        .map(str::to_string)
        .collect()
}

/// The parameters a route's `name_from` names the object by: one (`"name"`), or several
/// joined by `/` (`"namespace/collection"`), whose values are then joined by `/`.
pub(crate) fn name_params(name_from: &str) -> Vec<&str> {
    name_from.split('/').collect()
}

/// The pattern in the router's syntax: `:name` segments become `{name}`.
pub(crate) fn router_pattern(pattern: &str) -> String {
    let trimmed = pattern.trim_end_matches('/');
    trimmed
        .split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_convert_to_router_syntax() {
        assert_eq!(router_pattern("/counter/:name"), "/counter/{name}");
        assert_eq!(router_pattern("/api/"), "/api");
        assert_eq!(router_pattern("/"), "");
        assert_eq!(params_of("/a/:x/{y}/z"), vec!["x", "y"]);
        assert_eq!(name_params("x"), ["x"]);
        assert_eq!(name_params("x/y"), ["x", "y"]);
    }
}
