//! Vars and secrets for objects: `[vars]` from the configuration, secrets from a file in
//! wrangler's `.dev.vars` form (`[server] secrets_file`) and from `ROOKERY_SECRET_*`
//! environment variables, which override the file.
//!
//! Errors name the file and line of a bad entry, never its value.

use std::ffi::OsString;

use rookery::{Secret, Vars};

use crate::config::{Config, ConfigError};

/// Environment variables named `ROOKERY_SECRET_<NAME>` hold secret `<NAME>`.
pub const SECRET_ENV_PREFIX: &str = "ROOKERY_SECRET_";

/// The vars and secrets `config` gives objects, with secrets from `environment` (the
/// process's, `std::env::vars_os()`, when serving).
pub fn load(
    config: &Config,
    environment: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vars, ConfigError> {
    let mut vars = Vars::new();
    for (name, value) in &config.vars {
        vars.set_var(name, value);
    }
    if let Some(path) = &config.server.secrets_file {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read the secrets file: {e}"),
        })?;
        for (name, value) in parse_dev_vars(&file, &text)? {
            vars.set_secret(name, Secret::new(value));
        }
    }
    for (name, value) in environment {
        let Some(name) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SECRET_ENV_PREFIX))
        else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.set_secret(name, Secret::new(value)),
            Err(_) => tracing::warn!(
                secret = name,
                "ignoring a secret from the environment that is not UTF-8"
            ),
        }
    }
    let both: Vec<&str> = vars
        .secret_names()
        .filter(|n| vars.var(n).is_some())
        .collect();
    if !both.is_empty() {
        tracing::warn!(
            names = ?both,
            "names are both vars and secrets; env.var and env.secret each see their own"
        );
    }
    Ok(vars)
}

/// The `KEY=VALUE` entries of a `.dev.vars` file: blank lines and `#` comments are skipped, an
/// `export ` prefix is allowed, and a value may be quoted (`"..."` with `\n`, `\"` and `\\`
/// escapes, or `'...'` taken as it is); an unquoted value ends at ` #`.
pub fn parse_dev_vars(file: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let error = |message: &str| ConfigError {
            file: file.to_string(),
            line: i + 1,
            message: message.to_string(),
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, raw)) = line.split_once('=') else {
            return Err(error("expected KEY=VALUE"));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err(error(
                "a secret's name may hold only letters, digits, '_', '.' and '-'",
            ));
        }
        let value = unquote(raw.trim()).ok_or_else(|| error("the value's quote is not closed"))?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// The value of `raw` (see [`parse_dev_vars`]); `None` if a quote is left open.
fn unquote(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('\'') {
        return rest.split_once('\'').map(|(value, _)| value.to_string());
    }
    if let Some(rest) = raw.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(value),
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    't' => value.push('\t'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        return None;
    }
    let value = match raw.find(" #") {
        Some(at) => &raw[..at],
        None => raw,
    };
    Some(value.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_vars_lines_are_read_as_wrangler_reads_them() {
        let text = "# secrets\n\nAPI_KEY=abc123\nexport TOKEN = \"a \\\"quoted\\\" value\\n\"\nRAW='x # y'\nPLAIN=z # comment\nEMPTY=\n";
        let entries = parse_dev_vars(".dev.vars", text).unwrap();
        assert_eq!(
            entries,
            [
                ("API_KEY".to_string(), "abc123".to_string()),
                ("TOKEN".to_string(), "a \"quoted\" value\n".to_string()),
                ("RAW".to_string(), "x # y".to_string()),
                ("PLAIN".to_string(), "z".to_string()),
                ("EMPTY".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named_without_its_value() {
        let e = parse_dev_vars("s.vars", "A=1\nB=\"hunter2\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("s.vars", 2));
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = parse_dev_vars("s.vars", "just-a-value-hunter2\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn the_environment_adds_to_and_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".dev.vars");
        std::fs::write(&file, "A=from-file\nB=file-only\n").unwrap();
        let mut config = Config::parse("x.toml", "[vars]\nMODE = \"prod\"\nLIMIT = 5\n").unwrap();
        config.server.secrets_file = Some(file);
        let env = [
            ("ROOKERY_SECRET_A", "from-env"),
            ("ROOKERY_SECRET_C", "env-only"),
            ("UNRELATED", "x"),
            ("ROOKERY_SECRET_", "nameless"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let vars = load(&config, env).unwrap();
        assert_eq!(vars.var("MODE"), Some("prod"));
        assert_eq!(vars.var("LIMIT"), Some("5"));
        let secret = |n: &str| vars.secret(n).map(|s| s.expose().to_string());
        assert_eq!(secret("A").as_deref(), Some("from-env"));
        assert_eq!(secret("B").as_deref(), Some("file-only"));
        assert_eq!(secret("C").as_deref(), Some("env-only"));
        assert_eq!(vars.secret_names().count(), 3);
        assert!(vars.secret("UNRELATED").is_none());
    }
}
