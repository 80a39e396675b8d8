//! `--set key.path=value` overrides on a parsed workspace.
//!
//! The typed workspace is serialised to JSON (externally tagged enums become
//! single-key objects such as `{"Pretrain": {...}}`), the dotted path is walked, the
//! value replaced, and the result deserialised and validated again. Path rules:
//!
//! - list items by index or, for items with a `name` (sessions), by name:
//!   `sessions.vit-dino.seed=1`, `sessions.0.seed=1`; `*` is every item
//!   (`sessions.*.device=cuda:0`, which is what `--device cuda:0` sets);
//! - an enum tag may be named (`stages.0.Pretrain.epochs`) or skipped: when a key is
//!   not found in a single-key object whose key is a variant name, the walk steps
//!   through the tag (`sessions.vit-dino.stages.0.optimizer.lr=0.001`);
//! - below a plugin's `config`, the config's RON text is edited: an existing field's
//!   value is replaced, a missing one is added (`sessions.vit-dino.backbone.config.depth=4`).
//!
//! Values are RON (`3`, `1e-3`, `true`, `"text"`, `[1, 2]`, `(k: 5)`, `Sgd((lr: 0.1))`);
//! bare words that are not numbers or booleans are strings (`device=cuda:0`).

use serde_json::{Map, Value};

use super::error::{Result, WorkspaceError};
use super::schema::{Workspace, check, ron_text};

/// Applies each `key.path=value` of `sets` in order; `ws` should be valid (as
/// [`super::schema::parse`] returns it). The result is validated again; errors name
/// the key that caused them.
pub fn apply(ws: Workspace, sets: &[String]) -> Result<Workspace> {
    sets.iter().try_fold(ws, |ws, set| apply_one(ws, set))
}

fn apply_one(ws: Workspace, set: &str) -> Result<Workspace> {
    let fail = |key: &str, message: String| WorkspaceError::Override {
        key: key.to_owned(),
        message,
    };
    let Some((key, text)) = set.split_once('=') else {
        return Err(fail(set, "expected 'key.path=value'".into()));
    };
    let (key, text) = (key.trim(), text.trim());
    let segments: Vec<&str> = key.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(fail(key, "the key has an empty segment".into()));
    }
    let mut json = serde_json::to_value(&ws).map_err(|e| fail(key, e.to_string()))?;
    set_in(&mut json, &segments, text, "").map_err(|m| fail(key, m))?;
    let mut updated: Workspace =
        serde_json::from_value(json).map_err(|e| fail(key, e.to_string()))?;
    keep_config_offsets(&ws, &mut updated);
    check(&updated, None).map_err(|problem| fail(key, problem.message))?;
    Ok(updated)
}

/// Offsets of plugin configs whose text did not change stay valid.
fn keep_config_offsets(old: &Workspace, new: &mut Workspace) {
    let old = old.plugin_refs();
    let new = new.plugin_refs_mut();
    if old.len() != new.len() {
        return;
    }
    for (o, n) in old.into_iter().zip(new) {
        if o.config == n.config {
            n.config_offset = o.config_offset;
        }
    }
}

fn join(at: &str, segment: &str) -> String {
    if at.is_empty() {
        segment.to_owned()
    } else {
        format!("{at}.{segment}")
    }
}

fn describe_at(at: &str) -> String {
    if at.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in '{at}'")
    }
}

fn quoted_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = items.into_iter().map(|k| format!("'{k}'")).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// A plugin reference serialises to exactly `{"name": ..., "config": "<RON text>"}`.
fn is_plugin_ref(map: &Map<String, Value>) -> bool {
    map.len() == 2
        && map.get("name").is_some_and(Value::is_string)
        && map.get("config").is_some_and(Value::is_string)
}

/// The tag and content of a single-key object whose key is a variant name
/// (`{"AdamW": {...}}`).
fn enum_tag(map: &mut Map<String, Value>) -> Option<(&String, &mut Value)> {
    if map.len() != 1 {
        return None;
    }
    map.iter_mut()
        .next()
        .filter(|(tag, _)| tag.starts_with(|c: char| c.is_ascii_uppercase()))
}

fn set_in(node: &mut Value, segments: &[&str], text: &str, at: &str) -> Result<(), String> {
    let Some((&segment, rest)) = segments.split_first() else {
        *node = ron_to_json(text);
        return Ok(());
    };
    match node {
        Value::Object(map) => {
            if is_plugin_ref(map) && segment == "config" {
                let config = map.get_mut("config").and_then(|c| match c {
                    Value::String(s) => Some(s),
                    _ => None,
                });
                let Some(config) = config else {
                    return Err("plugin config is not text".into());
                };
                *config = if rest.is_empty() {
                    text.to_owned()
                } else {
                    edit_config(config, rest, text, &join(at, segment))?
                };
                return Ok(());
            }
            if let Some(child) = map.get_mut(segment) {
                return set_in(child, rest, text, &join(at, segment));
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            if let Some((tag, inner)) = enum_tag(map) {
                let at = join(at, tag);
                return set_in(inner, segments, text, &at);
            }
            Err(format!(
                "unknown key '{segment}' {}; available: {}",
                describe_at(at),
                quoted_list(keys.iter().map(String::as_str))
            ))
        }
        Value::Array(items) if segment == "*" => {
            if items.is_empty() {
                return Err(format!("'*' {}: the list is empty", describe_at(at)));
            }
            for (i, item) in items.iter_mut().enumerate() {
                set_in(item, rest, text, &join(at, &i.to_string()))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let by_index = segment.parse::<usize>().ok().filter(|&i| i < items.len());
            let by_name = || {
                items
                    .iter()
                    .position(|item| item.get("name").and_then(Value::as_str) == Some(segment))
            };
            let Some(index) = by_index.or_else(by_name) else {
                let names: Vec<&str> = items
                    .iter()
                    .filter_map(|item| item.get("name").and_then(Value::as_str))
                    .collect();
                let range = match items.len() {
                    0 => "the list is empty".to_owned(),
                    n => format!("indices 0..={}", n - 1),
                };
                let names = if names.is_empty() {
                    String::new()
                } else {
                    format!(", names {}", quoted_list(names))
                };
                return Err(format!(
                    "no item '{segment}' {}; available: {range}{names}",
                    describe_at(at)
                ));
            };
            set_in(&mut items[index], rest, text, &join(at, segment))
        }
        other => Err(format!(
            "'{at}' is {}, it has no key '{segment}'",
            match other {
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "empty",
            }
        )),
    }
}

/// Sets field path `segments` of the RON struct literal `config` to the RON `text`.
fn edit_config(config: &str, segments: &[&str], text: &str, at: &str) -> Result<String, String> {
    let Some(root) = ron_text::value(config) else {
        return Err(format!("'{at}' is not a readable RON value: '{config}'"));
    };
    let mut node = &root;
    let mut at = at.to_owned();
    let (last, parents) = segments
        .split_last()
        .expect("edit_config should be called with at least one segment");
    for &segment in parents {
        node = match node.inner().field(segment) {
            Some(child) => child,
            None => return Err(unknown_config_field(node.inner(), segment, &at)),
        };
        at = join(&at, segment);
    }
    let node = node.inner();
    if node.open != Some(b'(') || node.entries.iter().any(|e| e.key.is_none()) {
        return Err(format!(
            "'{at}' is not a struct literal '(field: value, ...)'"
        ));
    }
    let mut out = config.to_owned();
    if let Some(old) = node.field(last) {
        let old_is_string = config[old.start..].starts_with('"');
        let new_is_bare = ron_text::value(text)
            .is_some_and(|n| n.open.is_none() && n.name.is_some())
            && !matches!(text, "true" | "false" | "None");
        let value = if old_is_string && (new_is_bare || ron_text::value(text).is_none()) {
            ron_quote(text)
        } else {
            text.to_owned()
        };
        out.replace_range(old.start..old.end, &value);
        return Ok(out);
    }
    let insertion = match node.entries.last() {
        None => (
            node.start + config[node.start..].find('(').unwrap_or(0) + 1,
            format!("{last}: {text}"),
        ),
        Some(entry) => {
            let after = ron_text::skip_ws(config, entry.value.end).unwrap_or(entry.value.end);
            if config[after..].starts_with(',') {
                (after + 1, format!(" {last}: {text},"))
            } else {
                (entry.value.end, format!(", {last}: {text}"))
            }
        }
    };
    out.insert_str(insertion.0, &insertion.1);
    Ok(out)
}

fn unknown_config_field(node: &ron_text::Node, segment: &str, at: &str) -> String {
    let keys = node.entries.iter().filter_map(|e| e.key.as_deref());
    format!(
        "unknown key '{segment}' in '{at}' (only the last key of a config path may be \
         new); available: {}",
        quoted_list(keys)
    )
}

fn ron_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A RON value as JSON in the shape serde gives the schema; anything that is not one
/// RON value, and bare words other than `true`/`false`/`None`, become strings.
fn ron_to_json(text: &str) -> Value {
    match ron_text::value(text) {
        Some(node) => node_to_json(text, &node),
        None => Value::String(text.to_owned()),
    }
}

fn node_to_json(src: &str, node: &ron_text::Node) -> Value {
    let text = &src[node.start..node.end];
    let Some(open) = node.open else {
        return match (node.name.as_deref(), text) {
            (_, "true") => Value::Bool(true),
            (_, "false") => Value::Bool(false),
            (_, "None") => Value::Null,
            (Some(_), _) => Value::String(text.to_owned()),
            (None, _) => {
                ron::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_owned()))
            }
        };
    };
    let keyed = !node.entries.is_empty() && node.entries.iter().all(|e| e.key.is_some());
    let items = || node.entries.iter().map(|e| node_to_json(src, &e.value));
    let object = || {
        node.entries
            .iter()
            .map(|e| {
                (
                    e.key.clone().unwrap_or_default(),
                    node_to_json(src, &e.value),
                )
            })
            .collect::<Map<_, _>>()
    };
    match (open, node.name.as_deref()) {
        (b'{', _) => Value::Object(object()),
        (b'[', _) => Value::Array(items().collect()),
        (_, _) if keyed => Value::Object(object()),
        (_, Some("Some")) if node.entries.len() == 1 => node_to_json(src, &node.entries[0].value),
        (_, Some(name)) => {
            let inner = match node.entries.len() {
                0 => Value::Null,
                1 => node_to_json(src, &node.entries[0].value),
                _ => Value::Array(items().collect()),
            };
            Value::Object(Map::from_iter([(name.to_owned(), inner)]))
        }
        (_, None) if node.entries.is_empty() => Value::Null,
        (_, None) => Value::Array(items().collect()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::workspace::schema::{Evaluator, Optimizer, Stage, parse};

    const WS: &str = r#"Workspace(
    name: "w",
    data: { "shapes": Shapes((classes: 6)) },
    sessions: [
        Session(
            name: "vit-dino",
            data: "shapes",
            backbone: Plugin(name: "vit", config: (preset: "tiny", head: (dim: 8), tags: [1, (2)])),
            stages: [
                Pretrain((task: Plugin(name: "dino", config: (out_dim: 64,)), epochs: 10)),
                Evaluate([Knn((k: 20))]),
            ],
        ),
        Session(name: "other", data: "shapes", backbone: Plugin(name: "vit"), stages: [Evaluate([])]),
    ],
)"#;

    fn ws() -> Workspace {
        parse(WS, Path::new("ws.ron")).unwrap()
    }

    fn set(sets: &[&str]) -> Result<Workspace> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        apply(ws(), &sets)
    }

    fn set_err(one: &str) -> String {
        set(&[one]).unwrap_err().to_string()
    }

    fn pretrain(ws: &Workspace, session: usize) -> &crate::workspace::schema::PretrainStage {
        match &ws.sessions[session].stages[0] {
            Stage::Pretrain(p) => p,
            other => panic!("expected Pretrain, got {other:?}"),
        }
    }

    #[test]
    fn paths_step_through_enum_tags_and_names() {
        let ws = set(&[
            "sessions.vit-dino.stages.0.epochs=3",
            "sessions.vit-dino.stages.0.optimizer.lr=0.001",
            "sessions.0.stages.0.Pretrain.batch_size=16",
            "sessions.vit-dino.stages.1.0.k=5",
            "data.shapes.classes=4",
            "sessions.other.seed=9",
        ])
        .unwrap();
        let p = pretrain(&ws, 0);
        assert_eq!((p.epochs, p.batch_size), (3, 16));
        let Optimizer::AdamW(adamw) = &p.optimizer else {
            panic!("optimizer should stay AdamW");
        };
        assert!((adamw.lr - 0.001).abs() < 1e-12);
        let Stage::Evaluate(evals) = &ws.sessions[0].stages[1] else {
            panic!("stage 1 should be Evaluate");
        };
        let Evaluator::Knn(knn) = &evals[0] else {
            panic!("the first evaluator is Knn");
        };
        assert_eq!(knn.k, 5);
        let crate::workspace::schema::DataSource::Shapes(shapes) = &ws.data["shapes"] else {
            panic!("shapes should stay Shapes");
        };
        assert_eq!(shapes.classes, 4);
        assert_eq!(ws.sessions[1].seed, 9);
    }

    #[test]
    fn values_are_ron_and_bare_words_are_strings() {
        let ws = set(&[
            "sessions.other.device=cuda:0",
            "name=renamed",
            "output=\"out dir\"",
            "sessions.vit-dino.stages.0.optimizer=Sgd((lr: 0.1))",
        ])
        .unwrap();
        assert_eq!(ws.sessions[1].device, "cuda:0");
        assert_eq!(ws.name, "renamed");
        assert_eq!(ws.output, std::path::PathBuf::from("out dir"));
        let Optimizer::Sgd(sgd) = &pretrain(&ws, 0).optimizer else {
            panic!("optimizer should be Sgd");
        };
        assert!((sgd.lr - 0.1).abs() < 1e-12 && (sgd.momentum - 0.9).abs() < 1e-12);
    }

    #[test]
    fn a_star_sets_every_item() {
        let ws = set(&["sessions.*.device=Cuda(1)", "sessions.*.precision=bf16"]).unwrap();
        for s in &ws.sessions {
            assert_eq!(s.device, "cuda:1");
            assert_eq!(s.precision, crate::workspace::schema::Precision::Bf16);
        }
        let err = set(&["sessions.*.device=gpu"]).unwrap_err().to_string();
        assert!(err.contains("device 'gpu' is neither"), "{err}");
        let err = set(&["sessions.*.nope=1"]).unwrap_err().to_string();
        assert!(err.contains("unknown key 'nope' in 'sessions.0'"), "{err}");
    }

    #[test]
    fn plugin_config_text_is_edited_in_place() {
        let ws = set(&[
            "sessions.vit-dino.backbone.config.preset=small",
            "sessions.vit-dino.backbone.config.head.dim=16",
            "sessions.vit-dino.backbone.config.depth=4",
            "sessions.vit-dino.stages.0.task.config.teacher_temp=0.04",
            "sessions.other.backbone.config.depth=2",
        ])
        .unwrap();
        assert_eq!(
            ws.sessions[0].backbone.config,
            r#"(preset: "small", head: (dim: 16), tags: [1, (2)], depth: 4)"#
        );
        assert_eq!(
            pretrain(&ws, 0).task.config,
            "(out_dim: 64, teacher_temp: 0.04,)"
        );
        assert_eq!(ws.sessions[1].backbone.config, "(depth: 2)");
        // Edited configs lose their file offset; untouched ones keep it.
        assert_eq!(ws.sessions[0].backbone.config_offset, None);
        let untouched = set(&["sessions.vit-dino.seed=1"]).unwrap();
        let offset = untouched.sessions[0].backbone.config_offset.unwrap();
        assert!(WS[offset..].starts_with("(preset: \"tiny\""));
        // The whole config can be replaced, and must stay valid RON.
        let ws = set(&["sessions.other.backbone.config=(depth: 1)"]).unwrap();
        assert_eq!(ws.sessions[1].backbone.config, "(depth: 1)");
        let err = set_err("sessions.other.backbone.config=(depth: ");
        assert!(
            err.starts_with("--set 'sessions.other.backbone.config': "),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_list_what_is_available() {
        let err = set_err("sessions.vit-dino.stages.0.epoch=3");
        assert_eq!(
            err,
            "--set 'sessions.vit-dino.stages.0.epoch': unknown key 'epoch' in \
             'sessions.vit-dino.stages.0.Pretrain'; available: 'batch_size', 'epochs', \
             'optimizer', 'task'"
        );
        let err = set_err("sessions.nope.seed=1");
        assert!(
            err.ends_with(
                "no item 'nope' in 'sessions'; available: indices 0..=1, names 'vit-dino', 'other'"
            ),
            "{err}"
        );
        let err = set_err("colour=red");
        assert!(
            err.contains("unknown key 'colour' at the top level; available: 'data'"),
            "{err}"
        );
        let err = set_err("sessions.vit-dino.backbone.config.nope.dim=1");
        assert!(
            err.contains("unknown key 'nope' in 'sessions.vit-dino.backbone.config'"),
            "{err}"
        );
        let err = set_err("name.first=x");
        assert!(
            err.contains("'name' is a string, it has no key 'first'"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_and_broken_rules_name_the_key() {
        let err = set_err("sessions.vit-dino.stages.0.epochs=ten");
        assert!(
            err.starts_with("--set 'sessions.vit-dino.stages.0.epochs': invalid type: string"),
            "{err}"
        );
        let err = set_err("sessions.vit-dino.stages.0.epochs=0");
        assert!(err.ends_with("epochs must be at least 1, got '0'"), "{err}");
        let err = set_err("sessions.vit-dino.device=gpu");
        assert!(err.contains("device 'gpu' is neither"), "{err}");
        assert!(set_err("seed").contains("expected 'key.path=value'"));
        assert!(set_err("sessions..seed=1").contains("empty segment"));
    }

    #[test]
    fn ron_values_convert_to_serde_shapes() {
        assert_eq!(ron_to_json("3"), serde_json::json!(3));
        assert_eq!(ron_to_json("-1e-3"), serde_json::json!(-1e-3));
        assert_eq!(ron_to_json("true"), serde_json::json!(true));
        assert_eq!(ron_to_json("None"), Value::Null);
        assert_eq!(ron_to_json("Some(2)"), serde_json::json!(2));
        assert_eq!(ron_to_json("\"a b\""), serde_json::json!("a b"));
        assert_eq!(ron_to_json("cpu"), serde_json::json!("cpu"));
        assert_eq!(ron_to_json("my run"), serde_json::json!("my run"));
        assert_eq!(ron_to_json("[1, (k: 2)]"), serde_json::json!([1, {"k": 2}]));
        assert_eq!(
            ron_to_json("Knn((k: 5))"),
            serde_json::json!({"Knn": {"k": 5}})
        );
        assert_eq!(ron_to_json("{\"a\": 1}"), serde_json::json!({"a": 1}));
    }
}
