//! Replaying a campaign without any model: every call is answered from the calls a
//! campaign recorded, matched on the stage, the sampling settings and the exact prompt.
//! A deterministic campaign asks the same questions again, so it gets the same answers and
//! produces the same programs; a question the recording never saw means the replay has
//! diverged, and the call fails saying so.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::Reply;
use crate::db::LlmCall;

type Key = (String, String, String);

pub struct ReplayBook {
    /// Each question's recorded answers, in the order they were given.
    answers: Mutex<HashMap<Key, VecDeque<LlmCall>>>,
    /// Which campaign was recorded, for error messages.
    source: String,
}

impl ReplayBook {
    pub fn new(source: &str, calls: Vec<LlmCall>) -> ReplayBook {
        let mut answers: HashMap<Key, VecDeque<LlmCall>> = HashMap::new();
        for call in calls {
            let key = (
                call.stage.clone(),
                call.params_json.clone(),
                call.prompt.clone(),
            );
            answers.entry(key).or_default().push_back(call);
        }
        ReplayBook {
            answers: Mutex::new(answers),
            source: source.to_string(),
        }
    }

    /// The recorded answer to this question: its reply, or the error the call failed with.
    pub fn answer(&self, stage: &str, params_json: &str, prompt: &str) -> Result<Reply, String> {
        let key = (
            stage.to_string(),
            params_json.to_string(),
            prompt.to_string(),
        );
        let call = self
            .answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
            .ok_or_else(|| {
                format!(
                    "replay of campaign {}: no recorded {stage} call asked this; the replay \
                     has diverged from the recording (a different config, or an evaluation \
                     whose score depends on timing)",
                    self.source
                )
            })?;
        match call.response {
            Some(text) => Ok(Reply {
                text,
                model: call.model,
                prompt_tokens: call.prompt_tokens.max(0) as usize,
                completion_tokens: call.completion_tokens.max(0) as usize,
                seconds: 0.0,
            }),
            None => Err(call
                .error
                .unwrap_or_else(|| "the recorded call failed".to_string())),
        }
    }
}
