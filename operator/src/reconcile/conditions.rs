//! Conditions are computed whole on every reconcile, then merged with the previous ones so that
//! `lastTransitionTime` only moves when a condition's status flips. An unchanged world therefore
//! yields an identical status, and the adapters skip the write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Longest message a condition or a stage record keeps; longer ones are cut at a character
/// boundary. Stage records keep as much so that the instructions at the end of a long error
/// reach the Ready condition, which repeats the first failure's.
pub const MAX_MESSAGE: usize = 1024;

/// A condition as computed, before merging.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// The conditions to write: `desired`, in order, each keeping its previous `lastTransitionTime`
/// unless its status changed. Conditions of types no longer desired are dropped. An empty message
/// becomes the reason: API servers before 1.22 turn empty strings into `null` under server-side
/// apply, then reject the `null` (`message` is a required string).
pub fn merge(previous: &[Condition], desired: Vec<Desired>, generation: Option<i64>, now: &Time) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            let reason = reason(&d.reason);
            Condition {
                type_: d.type_.to_string(),
                status,
                message: truncate(if d.message.is_empty() { &reason } else { &d.message }, MAX_MESSAGE),
                reason,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// A valid condition reason (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`): other characters are
/// dropped, and an empty result becomes `Unknown`.
pub fn reason(raw: &str) -> String {
    let kept: String = raw.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(128).collect();
    let kept = kept.trim_start_matches(|c: char| !c.is_ascii_alphabetic());
    if kept.is_empty() {
        "Unknown".into()
    } else {
        kept.to_string()
    }
}

/// `s` cut to at most `max` bytes at a character boundary, marked with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let first = merge(&[], vec![Desired::new("Ready", false, "Running", "a")], Some(1), &at(10));
        let second = merge(&first, vec![Desired::new("Ready", false, "Running", "b")], Some(1), &at(20));
        assert_eq!(second[0].last_transition_time, at(10));
        assert_eq!(second[0].message, "b");
    }

    #[test]
    fn flipped_status_moves_the_transition_time() {
        let first = merge(&[], vec![Desired::new("Ready", false, "Running", "")], Some(1), &at(10));
        let second = merge(&first, vec![Desired::new("Ready", true, "Succeeded", "")], Some(2), &at(20));
        assert_eq!(second[0].last_transition_time, at(20));
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn merging_the_same_desired_conditions_twice_is_identical() {
        let desired =
            || vec![Desired::new("Ready", true, "Succeeded", ""), Desired::new("Scored", true, "Succeeded", "3/3")];
        let first = merge(&[], desired(), Some(1), &at(10));
        assert_eq!(merge(&first, desired(), Some(1), &at(99)), first);
    }

    #[test]
    fn an_empty_message_becomes_the_reason() {
        let merged = merge(&[], vec![Desired::new("Ready", true, "Succeeded", "")], Some(1), &at(10));
        assert_eq!(merged[0].message, "Succeeded");
    }

    #[test]
    fn reasons_are_made_valid() {
        assert_eq!(reason("StorageError"), "StorageError");
        assert_eq!(reason("bad reason!"), "badreason");
        assert_eq!(reason("9lives"), "lives");
        assert_eq!(reason(""), "Unknown");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let cut = truncate(&"é".repeat(600), 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'));
    }
}
