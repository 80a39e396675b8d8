//! RON helpers: parse a plugin config with line:column errors, and print defaults.

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Parses `text` as `T`; an empty text means `T::default()`.
///
/// Errors carry the 1-based line and column in `text`.
pub fn parse_config<T: DeserializeOwned + Default>(text: &str) -> Result<T> {
    if text.trim().is_empty() || text.trim() == "()" {
        return Ok(T::default());
    }
    ron::from_str(text).map_err(|e| Error::Config {
        message: e.code.to_string(),
        line: u32::try_from(e.span.start.line).unwrap_or(u32::MAX),
        column: u32::try_from(e.span.start.col).unwrap_or(u32::MAX),
    })
}

/// `value` as pretty RON text (used for a plugin's default config).
pub fn to_ron_text<T: Serialize>(value: &T) -> String {
    ron::ser::to_string_pretty(value, ron::ser::PrettyConfig::default())
        .unwrap_or_else(|e| format!("/* cannot print defaults: {e} */"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        depth: usize,
        name: String,
    }

    #[test]
    fn unknown_field_has_position() {
        let err = parse_config::<Cfg>("(\n  depht: 3,\n)").unwrap_err();
        match err {
            Error::Config {
                message,
                line,
                column,
            } => {
                assert!(message.contains("depht"), "{message}");
                assert_eq!(line, 2);
                assert!(column >= 3, "{column}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_round_trip() {
        let text = to_ron_text(&Cfg {
            depth: 4,
            name: "x".into(),
        });
        let back: Cfg = parse_config(&text).unwrap();
        assert_eq!(
            back,
            Cfg {
                depth: 4,
                name: "x".into()
            }
        );
        assert_eq!(parse_config::<Cfg>("()").unwrap(), Cfg::default());
    }
}
