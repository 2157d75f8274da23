//! What a resource may ask of the cluster it runs in. Whoever can create a MIRA resource chooses
//! the image its Jobs run, their ServiceAccount, and the model endpoints its plans send records
//! (and an API key) to; the operator's allowlists, set by whoever installs it (the chart's
//! values), bound those choices. A stage that asks for anything else fails with reason
//! `NotAllowed`, naming the refusal, and no Job is created.

use crate::api::JobTemplate;

/// Allowlists; an empty one allows anything. A pattern is exact, or has one `*` at its start
/// (`*.models.svc.cluster.local`) or at its end (`registry.example.com/mira/*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// Images a resource's `spec.job.image` may name (the operator's default image is always
    /// allowed).
    pub images: Vec<String>,
    /// ServiceAccounts `spec.job.serviceAccountName` may name.
    pub service_accounts: Vec<String>,
    /// Hosts of the model endpoints a plan may call (`teacher.endpoint.url`, ...).
    pub endpoint_hosts: Vec<String>,
}

impl Policy {
    /// Why a stage with this Job template and plan may not run, if it may not.
    pub fn refusal(&self, template: &JobTemplate, plan: &str) -> Option<String> {
        if let Some(image) = template.image.as_deref().filter(|i| !allowed(&self.images, i)) {
            return Some(format!("image {image:?} is not among the allowed images {:?}", self.images));
        }
        if let Some(account) = template.service_account_name.as_deref().filter(|a| !allowed(&self.service_accounts, a))
        {
            return Some(format!(
                "ServiceAccount {account:?} is not among the allowed ServiceAccounts {:?}",
                self.service_accounts
            ));
        }
        if self.endpoint_hosts.is_empty() {
            return None;
        }
        let plan: serde_json::Value = serde_json::from_str(plan).ok()?;
        scorer_runner::plan::endpoint_urls(&plan).into_iter().find_map(|endpoint| {
            let host = url::Url::parse(&endpoint).ok().and_then(|u| u.host_str().map(str::to_string));
            match host {
                Some(host) if allowed(&self.endpoint_hosts, &host) => None,
                Some(host) => Some(format!(
                    "model endpoint {endpoint:?}: host {host:?} is not among the allowed endpoint hosts {:?}",
                    self.endpoint_hosts
                )),
                None => Some(format!("model endpoint {endpoint:?} has no host to check against the allowlist")),
            }
        })
    }
}

fn allowed(patterns: &[String], value: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match (p.strip_prefix('*'), p.strip_suffix('*')) {
            (Some(suffix), _) => value.ends_with(suffix),
            (None, Some(prefix)) => value.starts_with(prefix),
            (None, None) => p == value,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            images: vec!["registry.example.com/mira/*".into()],
            service_accounts: vec!["mira-worker".into()],
            endpoint_hosts: vec!["*.models.svc.cluster.local".into(), "api.example.com".into()],
        }
    }

    fn teacher(url: &str) -> String {
        serde_json::json!({"groups": [], "pass": {"teacher": {"kind": "endpoint", "url": url, "model": "m"}}})
            .to_string()
    }

    #[test]
    fn images_accounts_and_endpoint_hosts_outside_the_lists_are_refused() {
        let p = policy();
        let template = |image: Option<&str>, account: Option<&str>| JobTemplate {
            image: image.map(str::to_string),
            service_account_name: account.map(str::to_string),
            ..Default::default()
        };
        let ok = teacher("http://vllm.models.svc.cluster.local:8000/v1");
        assert_eq!(p.refusal(&template(None, None), &ok), None, "the operator's own image is allowed");
        assert_eq!(p.refusal(&template(Some("registry.example.com/mira/runner:1"), Some("mira-worker")), &ok), None);
        let refused = p.refusal(&template(Some("evil.example.org/miner:1"), None), &ok).unwrap();
        assert!(refused.contains("evil.example.org/miner:1"), "{refused}");
        assert!(p.refusal(&template(None, Some("cluster-admin-sa")), &ok).unwrap().contains("cluster-admin-sa"));
        let exfiltrate = p.refusal(&template(None, None), &teacher("https://collector.evil.example.org/v1")).unwrap();
        assert!(exfiltrate.contains("collector.evil.example.org"), "{exfiltrate}");
        assert_eq!(p.refusal(&template(None, None), &teacher("https://api.example.com/v1")), None);
        assert_eq!(Policy::default().refusal(&template(Some("any:1"), Some("any")), &teacher("http://x/v1")), None);
    }
}
