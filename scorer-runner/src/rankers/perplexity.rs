//! Perplexity filtering: a record ranks by its mean log-probability per token under a reference
//! language model (minus the log of its perplexity), so the threshold keeps the records the model
//! finds most predictable, the classic filter of CCNet (Wenzek et al. 2020) that the MIRA paper
//! compares with.
//!
//! The mean is over the record's first `max_tokens` tokens (the model's own tokenizer), each
//! given those before it; [`crate::models::local`] says how mistral.rs is made to give it.

use crate::error::{Error, Result};
use crate::models::Chat;
use crate::plan::{ModelSpec, PerplexitySpec};
use crate::records::TextRecord;
use crate::steps::Context;

/// The floor of the aggregate, in nats per token: a perplexity of e^20 (about 5 x 10^8), past
/// which records no longer differ in rank. The histograms span [FLOOR, 0].
pub const FLOOR: f64 = -20.0;

pub struct Perplexity {
    /// Boxed: a loaded model is large beside the other rankers.
    model: Box<Chat>,
    max_tokens: usize,
    runtime: tokio::runtime::Handle,
}

impl Perplexity {
    pub async fn load(ctx: &Context, spec: &PerplexitySpec) -> Result<Self> {
        if matches!(spec.model, ModelSpec::Endpoint { .. }) {
            return Err(Error::plan(
                "perplexity needs an in-process reference model: an endpoint's chat API returns no \
                 log-probabilities of a given text",
            ));
        }
        if spec.max_tokens < 2 {
            return Err(Error::plan("perplexity maxTokens must be at least 2"));
        }
        let model = Box::new(Chat::load(&ctx.storage, &ctx.scratch, &spec.model).await?);
        Ok(Perplexity { model, max_tokens: spec.max_tokens, runtime: tokio::runtime::Handle::current() })
    }

    /// Each record's mean log-probability per token, in order; `None` for a record of a single
    /// token, or one the model refused (a warning says why); an engine that stopped answering
    /// fails the unit instead, not every record after it. Called off the async runtime, as
    /// every ranker is; the model scores one record at a time (see
    /// [`crate::models::local::LocalChat::log_likelihood`]).
    pub fn mean_log_probs(&self, records: &[&TextRecord<'_>]) -> Result<Vec<Option<f64>>> {
        self.runtime.block_on(async {
            let mut means = Vec::with_capacity(records.len());
            for record in records {
                means.push(match self.model.log_likelihood(&record.text, self.max_tokens).await {
                    Ok(likelihood) => likelihood.mean(),
                    Err(Error::Model(message)) => {
                        tracing::warn!(id = %record.id, %message, "no perplexity");
                        None
                    }
                    Err(e) => return Err(e),
                });
            }
            Ok(means)
        })
    }
}
