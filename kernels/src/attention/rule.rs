//! A kernel that runs any `KeyRule` and `ScoreModifier` on the tiled engine.

use std::sync::Arc;

use super::{
    AttentionInput, AttentionKernel, CachePolicy, KeyRule, LayerAttention, Mask, ScoreModifier,
    SinkWindow, TiledAttention,
};
use crate::Result;

/// Exact softmax attention over the keys that both the layer's mask and `rule` allow, with
/// an optional score modifier, run block-sparse by `TiledAttention::forward_rule`. With a
/// keep rule, the cache drops the keys it no longer keeps.
#[derive(Clone, Debug)]
pub struct RuleAttention {
    name: String,
    rule: Arc<dyn KeyRule>,
    modifier: Option<Arc<dyn ScoreModifier>>,
    keep: Option<Arc<dyn KeyRule>>,
    engine: TiledAttention,
}

impl RuleAttention {
    /// A kernel named `name` (as benchmarks and the AKL compiler report it) running `rule`
    /// with the default tiles. The rule's own `validate` must pass.
    pub fn new(
        name: impl Into<String>,
        rule: Arc<dyn KeyRule>,
        modifier: Option<Arc<dyn ScoreModifier>>,
    ) -> Result<RuleAttention> {
        rule.validate()?;
        Ok(RuleAttention {
            name: name.into(),
            rule,
            modifier,
            keep: None,
            engine: TiledAttention::default(),
        })
    }

    /// StreamingLLM: `sinks` first tokens plus a sliding `window` (see `SinkWindow`).
    pub fn sink_window(sinks: usize, window: usize) -> Result<RuleAttention> {
        let rule = SinkWindow::new(sinks, window)?;
        RuleAttention::new(
            format!("sink_window({sinks},{window})"),
            Arc::new(rule),
            None,
        )
    }

    /// A layer mask (sliding window, Llama 4 chunks) applied as a rule on top of whatever
    /// mask the layer already has.
    pub fn mask(mask: Mask) -> Result<RuleAttention> {
        mask.validate()?;
        let name = match mask {
            Mask::Causal => "causal".to_string(),
            Mask::SlidingWindow { window } => format!("sliding_window({window})"),
            Mask::Chunked { chunk } => format!("chunked({chunk})"),
        };
        RuleAttention::new(name, Arc::new(mask), None)
    }

    /// The same kernel with a cache that keeps, while the newest position is `q`, only the
    /// keys `k` with `keep.allows(q, k)`. The caller vouches that the rule never shows a
    /// dropped key again (the AKL checker proves it for a program's `keep`).
    pub fn with_keep(self, keep: Arc<dyn KeyRule>) -> Result<RuleAttention> {
        keep.validate()?;
        Ok(RuleAttention {
            keep: Some(keep),
            ..self
        })
    }

    /// The same kernel on another engine (tile sizes, portable code).
    pub fn with_engine(self, engine: TiledAttention) -> RuleAttention {
        RuleAttention { engine, ..self }
    }

    /// The rule applied on top of the layer's mask.
    pub fn rule(&self) -> &dyn KeyRule {
        self.rule.as_ref()
    }

    /// The score modifier, if any.
    pub fn modifier(&self) -> Option<&dyn ScoreModifier> {
        self.modifier.as_deref()
    }

    /// `forward`, also writing each row's log-sum-exp (`-inf` for a row that sees no key).
    pub fn forward_with_lse(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        let (rule, modifier) = (self.rule(), self.modifier());
        self.engine
            .forward_rule(input, layer, rule, modifier, out, Some(lse))
    }
}

impl AttentionKernel for RuleAttention {
    fn name(&self) -> &str {
        &self.name
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            keep: self.keep.clone(),
            page_summaries: Vec::new(),
        }
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        let (rule, modifier) = (self.rule(), self.modifier());
        self.engine
            .forward_rule(input, layer, rule, modifier, out, None)
    }
}
