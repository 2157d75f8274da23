//! Deterministic names and addresses: child Job names, stage output roots, digests.

use sha2::{Digest, Sha256};

use crate::api::Step;

/// Longest Kubernetes name that can also be a label value.
const MAX_NAME: usize = 63;

/// Hex SHA-256 of the parts, each terminated so that `["ab", "c"]` and `["a", "bc"]` differ.
pub fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// The Job of one stage: `<resource>-<step>[-<group>]-g<generation>-<digest>`, at most 63
/// characters. The digest covers the resource (its name and uid), the stage and its plan, so the
/// name stays unique when the readable prefix is shortened, a stage replanned at the same
/// generation (its upstream changed) gets a new Job rather than colliding with the finished one,
/// and a resource deleted and applied again does not find its predecessor's Job and plan
/// ConfigMap (still being garbage-collected) under its own names.
pub fn job_name(
    resource: &str,
    uid: &str,
    step: Step,
    group: Option<&str>,
    generation: i64,
    plan_digest: &str,
) -> String {
    let stage = super::stage_name(step, group);
    let hash = if uid.is_empty() {
        digest(&[resource, &stage, plan_digest])
    } else {
        digest(&[resource, uid, &stage, plan_digest])
    };
    let hash = &hash[..8];
    let suffix = format!("-g{generation}-{hash}");
    let mut prefix = dns_label(&format!("{resource}-{}", stage.replace('/', "-")));
    prefix.truncate(MAX_NAME.saturating_sub(suffix.len()));
    format!("{}{suffix}", prefix.trim_end_matches('-'))
}

/// Lower-cases and replaces every character a DNS label may not hold with `-`.
fn dns_label(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// Where a stage's outputs go before its plan digest is appended:
/// `<root>/<namespace>/<plural>/<resource>/<stage>`.
pub fn stage_base(root: &str, namespace: &str, plural: &str, resource: &str, stage: &str) -> String {
    [namespace, plural, resource, stage]
        .iter()
        .fold(root.trim_end_matches('/').to_string(), |acc, part| format!("{acc}/{part}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_deterministic_and_distinct_per_stage_and_plan() {
        let a = job_name("corpus", "", Step::Score, Some("code"), 2, "p1");
        assert_eq!(a, job_name("corpus", "", Step::Score, Some("code"), 2, "p1"));
        assert!(a.starts_with("corpus-score-code-g2-"), "{a}");
        assert_ne!(a, job_name("corpus", "", Step::Score, Some("math"), 2, "p1"));
        assert_ne!(a, job_name("corpus", "", Step::Score, Some("code"), 2, "p2"));
        assert_ne!(a, job_name("corpus", "", Step::Score, Some("code"), 3, "p1"));
        assert_ne!(a, job_name("corpus", "uid-2", Step::Score, Some("code"), 2, "p1"), "another life of the name");
    }

    #[test]
    fn long_job_names_are_shortened_to_a_valid_label() {
        let resource = "a".repeat(63);
        let group = "b".repeat(63);
        let name = job_name(&resource, "", Step::Threshold, Some(&group), 12345, "p");
        assert!(name.len() <= MAX_NAME, "{} chars", name.len());
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(!name.starts_with('-') && !name.ends_with('-'));
        assert_ne!(name, job_name(&resource, "", Step::Threshold, Some(&format!("{group}x")), 12345, "p"));
    }

    #[test]
    fn resource_names_with_dots_become_valid_job_names() {
        assert!(job_name("web.v2", "", Step::Cluster, None, 1, "p").starts_with("web-v2-cluster-g1-"));
    }

    #[test]
    fn stage_base_joins_without_double_slashes() {
        assert_eq!(
            stage_base("s3://b/mira/", "ns", "filterruns", "fr", "score/code"),
            "s3://b/mira/ns/filterruns/fr/score/code"
        );
    }
}
