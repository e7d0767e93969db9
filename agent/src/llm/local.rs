//! A GGUF model on our own core, in process. Decoding can be constrained by AKL's grammar,
//! so that every reply the model finishes is a program that parses.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use kernels::akl::prefix::AklGrammar;
use kernels::constrain::{GrammarConstraint, TokenConstraint, TokenTrie};
use kernels::generate::{generate_constrained, GenerateOptions, Sampling};
use kernels::tokenizer::ChatMessage;
use kernels::Model;

use super::{Reply, Request};

pub struct LocalLlm {
    model: Model,
    /// The vocabulary in byte order, built once for constrained decoding.
    trie: TokenTrie,
    name: String,
}

impl LocalLlm {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let model = Model::load(path)?;
        if model.chat_template.is_none() {
            anyhow::bail!(
                "{} has no chat template; the mutator needs an instruct model",
                path.display()
            );
        }
        let trie = TokenTrie::new(&model.tokenizer);
        let name = super::model_name(path);
        Ok(Self { model, trie, name })
    }

    /// The model's name in replies and records: its file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers `request`; with `akl_grammar` every token must keep the reply a prefix of
    /// one AKL program, and decoding stops when the program is complete. Blocking: run it
    /// off the async runtime.
    pub fn complete(&self, request: &Request, akl_grammar: bool) -> anyhow::Result<Reply> {
        let started = Instant::now();
        let template = self.model.chat_template.as_ref().expect("checked at load");
        let messages = [
            ChatMessage::system(&request.system),
            ChatMessage::user(&request.user),
        ];
        let prompt = self
            .model
            .tokenizer
            .encode_with_bos(&template.render(&messages, true)?)?;
        let options = GenerateOptions {
            max_tokens: request.max_tokens,
            sampling: Sampling {
                temperature: request.temperature,
                top_k: Some(40),
                top_p: Some(0.95),
                seed: request.seed,
            },
            stop_tokens: self.model.tokenizer.stop_ids().to_vec(),
        };
        let mut grammar = GrammarConstraint::new(AklGrammar, &self.trie, &options.stop_tokens);
        let constraint: Option<&mut dyn TokenConstraint> = akl_grammar.then_some(&mut grammar);
        let generation = generate_constrained(&self.model, &prompt, &options, constraint, |_| {})
            .with_context(|| format!("generating with {}", self.name))?;
        Ok(Reply {
            text: generation.text,
            model: self.name.clone(),
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.tokens.len(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
