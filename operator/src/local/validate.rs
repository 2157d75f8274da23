//! What the API server checks of a manifest, checked by `mira run` before any work, so that the
//! same YAML fails the same way with and without a cluster: unknown fields (as `kubectl apply`'s
//! strict field validation rejects them), the CRDs' CEL rules (set `k` or `groups`, not both;
//! `groupRetention` only under policy `group`; DNS-safe names; ...), and unique keys in list-map
//! lists (two groups or two sources of one name). Numeric ranges and string patterns that only
//! the OpenAPI schema states are not checked here; the planner checks those it relies on.

use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The object a manifest document describes, or every reason the API server would refuse it.
pub fn object<K: DeserializeOwned + Serialize + CustomResourceExt>(value: serde_yaml::Value) -> Result<K, String> {
    let mut unknown = Vec::new();
    let object: K = serde_ignored::deserialize(value, |path| {
        // The type fields, which the caller has read, are not fields of the derived struct.
        let path = path.to_string();
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    })
    .map_err(|e| e.to_string())?;
    if !unknown.is_empty() {
        return Err(format!("unknown field {}", unknown.join(", ")));
    }
    let mut errors: Vec<String> = match kube::core::cel::validate_cel(&object) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().iter().map(ToString::to_string).collect(),
    };
    let crd = K::crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
    let schema = serde_json::to_value(schema).map_err(|e| e.to_string())?;
    let json = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    duplicate_keys(&schema, &json, "", &mut errors);
    if errors.is_empty() {
        Ok(object)
    } else {
        Err(errors.join("; "))
    }
}

/// Items of a `x-kubernetes-list-type: map` list whose keys repeat, anywhere under `value`.
fn duplicate_keys(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                if let Some(schema) = schema.pointer(&format!("/properties/{name}")) {
                    let path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    duplicate_keys(schema, field, &path, errors);
                }
            }
        }
        Value::Array(items) => {
            let keys: Vec<&str> = match (&schema["x-kubernetes-list-type"], &schema["x-kubernetes-list-map-keys"]) {
                (Value::String(kind), Value::Array(keys)) if kind == "map" => {
                    keys.iter().filter_map(Value::as_str).collect()
                }
                _ => Vec::new(),
            };
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !keys.is_empty() {
                    let key: Vec<&Value> = keys.iter().map(|k| &item[*k]).collect();
                    if !seen.insert(serde_json::to_string(&key).unwrap_or_default()) {
                        let shown: Vec<String> = keys.iter().zip(&key).map(|(k, v)| format!("{k}={v}")).collect();
                        errors.push(format!("{path}[{i}]: duplicate entry with {}", shown.join(", ")));
                    }
                }
                duplicate_keys(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}
