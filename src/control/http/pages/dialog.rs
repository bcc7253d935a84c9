//! The add-on's install dialog, rendered from the manifest: each field with its label
//! linked to its input, the browser-side constraints the server also checks (`required`,
//! `type=number`, `min`, `max`), its current value (the stored settings, or what was
//! typed when a submission is refused; never the password), its error, and an error
//! summary for the top of the dialog.

use std::collections::HashMap;

use crate::control::manifest::Manifest;
use crate::control::ops::FieldErrors;

pub struct FieldView {
    pub name: String,
    pub kind: String,
    pub caption: String,
    pub value: String,
    pub tooltip: String,
    pub error: String,
    pub required: bool,
    pub choices: Vec<(String, String, bool)>,
    pub show_if: String,
    pub hidden: bool,
    /// `text` or `number` (for `<input type=...>`).
    pub input_type: String,
    pub min: String,
    pub max: String,
    pub placeholder: String,
}

/// The install dialog's fields with their current values. `current` is the stored settings
/// or a re-rendered submission; a password field's value is always empty.
pub(crate) fn dialog_fields(manifest: &Manifest, env_name: &str, node_names: &[&str], current: &HashMap<String, String>, dialog_errors: &FieldErrors, password_stored: bool) -> Vec<FieldView> {
    manifest
        .settings
        .iter()
        .map(|f| {
            let value = match f.kind.as_str() {
                "environment" => env_name.to_owned(),
                "nodes" => node_names.join(", "),
                "password" => String::new(),
                _ => current.get(&f.name).cloned().or_else(|| f.default.clone()).unwrap_or_default(),
            };
            FieldView {
                choices: f.values.iter().map(|c| (c.value.clone(), c.caption.clone(), c.value == value)).collect(),
                show_if: f.show_if.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                hidden: !manifest.visible(f, current),
                name: f.name.clone(),
                kind: f.kind.clone(),
                caption: f.caption.clone(),
                tooltip: if f.kind == "password" && password_stored {
                    "A shared password is stored (never shown). Leave this empty to keep it, or type a new one in both environments.".into()
                } else {
                    f.tooltip.clone().unwrap_or_default()
                },
                error: dialog_errors.get(&f.name).cloned().unwrap_or_default(),
                // A stored password may be left empty.
                required: f.required && !(f.kind == "password" && password_stored),
                input_type: if f.kind == "integer" { "number".into() } else { "text".into() },
                min: f.min.map(|m| m.to_string()).unwrap_or_default(),
                max: f.max.map(|m| m.to_string()).unwrap_or_default(),
                placeholder: match f.kind.as_str() {
                    "address" => "203.0.113.7:7756".into(),
                    "string" if f.name == "path" => "ROOT".into(),
                    _ => String::new(),
                },
                value,
            }
        })
        .collect()
}

/// The errors of a refused submission for the summary at the top: (field id, caption, error).
pub fn error_summary(fields: &[FieldView], errors: &FieldErrors) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = fields.iter().filter(|f| !f.error.is_empty()).map(|f| (format!("field-{}", f.name), f.caption.clone(), f.error.clone())).collect();
    // Errors about something that is not a field (no nodes yet, a change in progress).
    for (k, v) in errors {
        if !fields.iter().any(|f| &f.name == k) {
            out.push((String::new(), k.clone(), v.clone()));
        }
    }
    out
}
