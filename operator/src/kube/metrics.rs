//! Prometheus metrics of the controllers, served as text on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: String,
    step: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    jobs: Family<StepLabels, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mira_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 14))) as fn() -> Histogram,
        );
        let jobs = Family::<StepLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciliations", "Reconcile passes", reconciles.clone());
        registry.register("reconcile_failures", "Reconcile passes that failed, by error category", failures.clone());
        registry.register("reconcile_duration_seconds", "Time a reconcile pass took", duration.clone());
        registry.register("jobs_created", "Stage Jobs created", jobs.clone());
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        Metrics { registry, reconciles, failures, duration: duration.clone(), jobs, leader }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &str, took: Duration) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &str, error: &crate::Error) {
        self.failures.get_or_create(&ErrorLabels { kind: kind.into(), error: error.category().into() }).inc();
    }

    pub fn job_created(&self, kind: &str, step: &str) {
        self.jobs.get_or_create(&StepLabels { kind: kind.into(), step: step.into() }).inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let metrics = Metrics::default();
        metrics.reconciled("FilterRun", Duration::from_millis(20));
        metrics.failed("FilterRun", &crate::Error::InvalidSpec("x".into()));
        metrics.job_created("FilterRun", "score");
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(text.contains("mira_operator_reconciliations_total{kind=\"FilterRun\"} 1"), "{text}");
        assert!(
            text.contains("mira_operator_reconcile_failures_total{kind=\"FilterRun\",error=\"InvalidSpec\"} 1"),
            "{text}"
        );
        assert!(text.contains("mira_operator_jobs_created_total{kind=\"FilterRun\",step=\"score\"} 1"), "{text}");
        assert!(text.contains("mira_operator_leader 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
