//! From raw record bytes to (id, text): parsing, text extraction per source, and the counted
//! reasons a record is skipped.

use std::borrow::Cow;

use serde::de::DeserializeSeed;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::formats::RawRecord;
use crate::plan::{SkipCounts, TextSpec};

/// Why a record was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    InvalidUtf8,
    InvalidJson,
    MissingText,
    EmptyText,
    Oversized,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::InvalidUtf8 => "invalid_utf8",
            Malformed::InvalidJson => "invalid_json",
            Malformed::MissingText => "missing_text",
            Malformed::EmptyText => "empty_text",
            Malformed::Oversized => "oversized",
        }
    }
}

impl SkipCounts {
    /// Counts a record skipped as malformed.
    pub fn add(&mut self, reason: Malformed, shard: &str, index: u64) {
        self.add_reason(reason.as_str(), shard, index);
    }
}

/// A record ready to featurize. The text is borrowed from the raw record's bytes when its JSON
/// string has no escapes (nearly always), so scoring a record copies nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct TextRecord<'a> {
    pub id: String,
    pub text: Cow<'a, str>,
}

impl TextRecord<'_> {
    /// The record with its text copied out, to keep beyond the raw record's batch.
    pub fn into_owned(self) -> TextRecord<'static> {
        TextRecord { id: self.id, text: Cow::Owned(self.text.into_owned()) }
    }
}

/// Parses a raw record and extracts its id and text.
pub fn extract<'r>(raw: &'r RawRecord, spec: &TextSpec) -> Result<TextRecord<'r>, Malformed> {
    if raw.oversized {
        return Err(Malformed::Oversized);
    }
    let json = std::str::from_utf8(&raw.bytes).map_err(|_| Malformed::InvalidUtf8)?;
    let text_path = spec.messages_field.as_deref().or(spec.field.as_deref()).unwrap_or("text");
    let [text, id] = members(json, [Some(text_path), spec.id_field.as_deref()])?;
    let text = match (&spec.messages_field, text) {
        (Some(_), Some(Member::Value(Value::Array(messages)))) => Cow::Owned(render_messages(&messages)),
        (None, Some(Member::Str(s))) => s,
        _ => return Err(Malformed::MissingText),
    };
    if text.trim().is_empty() {
        return Err(Malformed::EmptyText);
    }
    let id = match id {
        Some(Member::Str(s)) => s.into_owned(),
        Some(Member::Value(Value::Number(n))) => n.to_string(),
        _ => content_id(&text),
    };
    Ok(TextRecord { id, text })
}

/// A member found at a path: a string (borrowed from the input unless it has escapes), or any
/// other JSON value.
enum Member<'j> {
    Str(Cow<'j, str>),
    Value(Value),
}

impl<'j> Member<'j> {
    /// A top-level member from its raw JSON text, which the parser has validated.
    fn from_raw(raw: &'j RawValue) -> Result<Self, Malformed> {
        let json = raw.get();
        match json.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(inner) if memchr::memchr(b'\\', inner.as_bytes()).is_none() => Ok(Member::Str(Cow::Borrowed(inner))),
            _ => serde_json::from_str(json).map(Member::from_value).map_err(|_| Malformed::InvalidJson),
        }
    }

    fn from_value(value: Value) -> Self {
        match value {
            Value::String(s) => Member::Str(Cow::Owned(s)),
            other => Member::Value(other),
        }
    }
}

/// Parses a JSON object, taking the members at the given (dotted) paths: every other member is
/// validated and skipped without being built, which is most of the cost of parsing a record,
/// and a wanted string is not copied unless it has escapes. Not an object, or not JSON:
/// [`Malformed::InvalidJson`].
fn members<'j, const N: usize>(json: &'j str, paths: [Option<&str>; N]) -> Result<[Option<Member<'j>>; N], Malformed> {
    let mut de = serde_json::Deserializer::from_str(json);
    let found = Members(paths.map(|p| p.map(|p| p.split('.').next().unwrap_or(p))))
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|_| found))
        .map_err(|_| Malformed::InvalidJson)?;
    let mut out = std::array::from_fn(|_| None);
    for ((slot, raw), path) in out.iter_mut().zip(found).zip(paths) {
        let (Some(raw), Some(path)) = (raw, path) else { continue };
        *slot = match path.split_once('.') {
            None => Some(Member::from_raw(raw)?),
            Some((_, nested)) => {
                let value: Value = serde_json::from_str(raw.get()).map_err(|_| Malformed::InvalidJson)?;
                nested.split('.').try_fold(value, |mut v, key| v.as_object_mut()?.remove(key)).map(Member::from_value)
            }
        };
    }
    Ok(out)
}

/// Visits a JSON object keeping the raw text of the members whose keys are wanted.
struct Members<'p, const N: usize>([Option<&'p str>; N]);

impl<'de, const N: usize> serde::de::DeserializeSeed<'de> for Members<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, const N: usize> serde::de::Visitor<'de> for Members<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(Key(key)) = map.next_key()? {
            if !self.0.contains(&Some(&*key)) {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            for (slot, wanted) in found.iter_mut().zip(&self.0) {
                if *wanted == Some(&*key) {
                    *slot = Some(value);
                }
            }
        }
        Ok(found)
    }
}

/// An object key, borrowed from the input unless it has escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_owned().into()))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
}

/// A `shard#index` place as (shard, record index), which orders places by shard, then record.
/// A stable id from the text itself: 128-bit xxh3, hex.
pub fn content_id(text: &str) -> String {
    let mut digits = [0u8; 32];
    hex::encode_to_slice(xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_be_bytes(), &mut digits).expect("32 digits");
    String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
}

/// A deterministic fraction in [0, 1) from an id, for splits and samples that every worker and
/// every rerun agree on.
pub fn id_fraction(id: &str, salt: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), salt);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Renders a chat or agent trace to text with one template, used everywhere a conversation is
/// scored, labelled or counted:
///
/// ```text
/// ### {role} ({name})
/// {content}
/// -> {tool}({arguments})
/// ```
///
/// one block per message, separated by a blank line; `({name})` only when the message has a
/// name; one `->` line per tool call. Content given as a list of parts keeps its text parts.
pub fn render_messages(messages: &[Value]) -> String {
    let mut out = String::new();
    for message in messages {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        let role = message.get("role").and_then(Value::as_str).unwrap_or("unknown");
        out.push_str("### ");
        out.push_str(role);
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            out.push_str(&format!(" ({name})"));
        }
        match message.get("content") {
            Some(Value::String(s)) => {
                out.push('\n');
                out.push_str(s);
            }
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        out.push('\n');
                        out.push_str(text);
                    }
                }
            }
            _ => {}
        }
        for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let function = call.get("function").unwrap_or(call);
            let name = function.get("name").and_then(Value::as_str).unwrap_or("tool");
            let arguments = match function.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            out.push_str(&format!("\n-> {name}({arguments})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(bytes: &[u8]) -> RawRecord {
        RawRecord { index: 7, bytes: bytes.to_vec(), oversized: false }
    }

    #[test]
    fn each_kind_of_bad_record_has_its_own_reason() {
        let spec = TextSpec::default();
        assert_eq!(extract(&raw(b"\xff\xfe"), &spec), Err(Malformed::InvalidUtf8));
        assert_eq!(extract(&raw(b"{\"text\": "), &spec), Err(Malformed::InvalidJson));
        assert_eq!(extract(&raw(b"[1,2]"), &spec), Err(Malformed::InvalidJson));
        assert_eq!(extract(&raw(b"{\"body\": \"x\"}"), &spec), Err(Malformed::MissingText));
        assert_eq!(extract(&raw(b"{\"text\": \"  \"}"), &spec), Err(Malformed::EmptyText));
        // Members that are skipped are still validated, and nothing may follow the object.
        assert_eq!(extract(&raw(b"{\"text\": \"x\", \"meta\": {\"a\": tru}}"), &spec), Err(Malformed::InvalidJson));
        assert_eq!(extract(&raw(b"{\"text\": \"x\"} {}"), &spec), Err(Malformed::InvalidJson));
        assert_eq!(extract(&raw(b"{\"text\": 5}"), &spec), Err(Malformed::MissingText));
        let big = RawRecord { index: 0, bytes: vec![], oversized: true };
        assert_eq!(extract(&big, &spec), Err(Malformed::Oversized));
    }

    #[test]
    fn ids_come_from_the_id_field_or_the_content() {
        let spec = TextSpec { field: Some("doc.body".into()), id_field: Some("n".into()), ..Default::default() };
        let r = extract(&raw(br#"{"n": 12, "doc": {"body": "hello"}}"#), &spec).map(TextRecord::into_owned).unwrap();
        assert_eq!(r, TextRecord { id: "12".into(), text: "hello".into() });
        let r = extract(&raw(br#"{"doc": {"body": "hello"}}"#), &spec).map(TextRecord::into_owned).unwrap();
        assert_eq!(r.id, content_id("hello"));
        // Two paths under one member, a key with an escape, the last of duplicate keys.
        let spec = TextSpec { field: Some("doc.body".into()), id_field: Some("doc.id".into()), ..Default::default() };
        let r = extract(&raw(br#"{"doc": {"body": "old"}, "d\u006fc": {"id": "a", "body": "new"}}"#), &spec)
            .map(TextRecord::into_owned)
            .unwrap();
        assert_eq!(r, TextRecord { id: "a".into(), text: "new".into() });
        assert_ne!(content_id("hello"), content_id("hello!"));
        // Ids are stable across versions: the 128-bit hash as 32 lower-case hex digits.
        assert_eq!(content_id("hello"), format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"hello")));
    }

    #[test]
    fn text_is_borrowed_unless_its_json_has_escapes() {
        let spec = TextSpec::default();
        let plain = raw(br#"{"text": "plain words", "n": 1}"#);
        assert!(matches!(extract(&plain, &spec).unwrap().text, Cow::Borrowed("plain words")));
        let escaped = raw(br#"{"text": "line\none \"q\" \u00e9 \\"}"#);
        assert_eq!(extract(&escaped, &spec).unwrap().text, "line\none \"q\" \u{e9} \\");
        // A raw control character is not valid JSON, borrowed or not.
        assert_eq!(extract(&raw(b"{\"text\": \"a\tb\"}"), &spec), Err(Malformed::InvalidJson));
    }

    #[test]
    fn agent_traces_render_roles_names_and_tool_calls() {
        let messages = json!([
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "ls", "arguments": "{\"path\":\".\"}"}}]},
            {"role": "tool", "name": "ls", "content": [{"type": "text", "text": "a.rs"}]}
        ]);
        let text = render_messages(messages.as_array().unwrap());
        assert_eq!(text, "### user\nlist files\n\n### assistant\n-> ls({\"path\":\".\"})\n\n### tool (ls)\na.rs");
    }

    #[test]
    fn skip_counts_merge_and_keep_the_first_place() {
        let mut a = SkipCounts::default();
        a.add(Malformed::InvalidJson, "s1", 3);
        let mut b = SkipCounts::default();
        b.add(Malformed::InvalidJson, "s2", 1);
        b.add(Malformed::EmptyText, "s2", 4);
        a.merge(&b);
        assert_eq!(a.counts["invalid_json"], 2);
        assert_eq!(a.first_seen["invalid_json"], "s1#3");
        assert_eq!(a.total(), 3);
        // Merged the other way round, the earliest place still wins: by shard, then by record
        // number (not as text, where "#10" would sort before "#9").
        let mut c = SkipCounts::default();
        c.add(Malformed::InvalidJson, "s1", 10);
        c.merge(&a);
        assert_eq!(c.first_seen["invalid_json"], "s1#3");
        let mut d = SkipCounts::default();
        d.add(Malformed::EmptyText, "s2", 9);
        let mut e = SkipCounts::default();
        e.add(Malformed::EmptyText, "s2", 10);
        e.merge(&d);
        assert_eq!(e.first_seen["empty_text"], "s2#9");
    }
}
