//! Grammar-constrained decoding: a token may be sampled only if the grammar accepts its
//! bytes from the current state, so every finished sample is in the grammar's language.
//!
//! A grammar is any byte-level recognizer ([`ByteGrammar`]; AKL's is
//! [`crate::akl::prefix::AklGrammar`]). Finding every allowed token walks the vocabulary in
//! byte order, so tokens that share a prefix share its steps and a refused prefix skips
//! all tokens under it ([`TokenTrie`]). Generation first tries the token it sampled from
//! the unmasked logits and masks only when that one is refused: resampling from the masked
//! distribution then gives each allowed token exactly its renormalised probability.

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A language over bytes, read one byte at a time.
pub trait ByteGrammar {
    type State: Clone;

    /// The state before any byte.
    fn start(&self) -> Self::State;

    /// The state after `byte`, or `None` when no text of the language continues this way.
    /// A state the grammar returns can always still be completed.
    fn advance(&self, state: &Self::State, byte: u8) -> Option<Self::State>;

    /// Whether the bytes read so far are a whole text of the language.
    fn is_complete(&self, state: &Self::State) -> bool;
}

/// The vocabulary's text tokens sorted by their bytes, with the length of the prefix each
/// shares with the one before it. Built once per tokenizer.
#[derive(Debug)]
pub struct TokenTrie {
    /// Token ids in byte order.
    sorted: Vec<u32>,
    bytes: Vec<Box<[u8]>>,
    /// `shared[i]`: bytes `sorted[i]` has in common with `sorted[i - 1]`.
    shared: Vec<usize>,
}

impl TokenTrie {
    /// Every text token of the tokenizer; control and other special tokens are left out
    /// (stop tokens are handled by [`GrammarConstraint`] itself).
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let n = tokenizer.vocab_size() as u32;
        let bytes: Vec<Box<[u8]>> = (0..n)
            .map(|id| match tokenizer.token_bytes(id) {
                Some(b) if tokenizer.is_text_token(id) => b.into(),
                _ => Box::default(),
            })
            .collect();
        let mut sorted: Vec<u32> = (0..n)
            .filter(|&id| !bytes[id as usize].is_empty())
            .collect();
        sorted.sort_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]));
        let shared = sorted
            .iter()
            .enumerate()
            .map(|(i, &id)| match i {
                0 => 0,
                _ => common_prefix(&bytes[sorted[i - 1] as usize], &bytes[id as usize]),
            })
            .collect();
        Self {
            sorted,
            bytes,
            shared,
        }
    }

    /// The state after all of `token`'s bytes, or `None` if the grammar refuses them (or
    /// the token is not a text token).
    pub fn advance<G: ByteGrammar>(
        &self,
        grammar: &G,
        state: &G::State,
        token: u32,
    ) -> Option<G::State> {
        let bytes = self.bytes.get(token as usize).filter(|b| !b.is_empty())?;
        let mut state = state.clone();
        for &b in bytes.iter() {
            state = grammar.advance(&state, b)?;
        }
        Some(state)
    }

    /// Every text token the grammar accepts whole from `state`, in byte order.
    pub fn allowed<G: ByteGrammar>(&self, grammar: &G, state: &G::State) -> Vec<u32> {
        let mut allowed = Vec::new();
        // states[k]: the state after the first k bytes of the current token.
        let mut states = vec![state.clone()];
        // Whether the previous token was refused at byte `states.len() - 1`.
        let mut refused = false;
        for (&id, &shared) in self.sorted.iter().zip(&self.shared) {
            let held = states.len() - 1;
            if refused && shared > held {
                continue; // it shares the refused byte
            }
            states.truncate(shared.min(held) + 1);
            refused = false;
            let bytes = &self.bytes[id as usize];
            for &b in &bytes[states.len() - 1..] {
                match grammar.advance(states.last().expect("never empty"), b) {
                    Some(next) => states.push(next),
                    None => {
                        refused = true;
                        break;
                    }
                }
            }
            if !refused {
                allowed.push(id);
            }
        }
        allowed
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What generation asks of a constraint; object safe, so `generate` takes any grammar.
pub trait TokenConstraint {
    /// Whether `token` may come next.
    fn allows(&self, token: u32) -> bool;
    /// Every token that may come next (stop tokens included once the text is complete).
    fn allowed(&self) -> Vec<u32>;
    /// Moves past `token`; fails if the constraint does not allow it.
    fn accept(&mut self, token: u32) -> Result<()>;
    /// Whether the text so far is complete, so that generation may stop.
    fn is_complete(&self) -> bool;
}

/// A [`ByteGrammar`] applied to a tokenizer's tokens.
pub struct GrammarConstraint<'t, G: ByteGrammar> {
    grammar: G,
    state: G::State,
    trie: &'t TokenTrie,
    stop_tokens: Vec<u32>,
}

impl<'t, G: ByteGrammar> GrammarConstraint<'t, G> {
    /// Starts at the grammar's start state; `stop_tokens` are allowed once the text is
    /// complete.
    pub fn new(grammar: G, trie: &'t TokenTrie, stop_tokens: &[u32]) -> Self {
        let state = grammar.start();
        Self {
            grammar,
            state,
            trie,
            stop_tokens: stop_tokens.to_vec(),
        }
    }
}

impl<G: ByteGrammar> TokenConstraint for GrammarConstraint<'_, G> {
    fn allows(&self, token: u32) -> bool {
        if self.stop_tokens.contains(&token) {
            return self.is_complete();
        }
        self.trie
            .advance(&self.grammar, &self.state, token)
            .is_some()
    }

    fn allowed(&self) -> Vec<u32> {
        let mut allowed = self.trie.allowed(&self.grammar, &self.state);
        if self.is_complete() {
            allowed.extend(&self.stop_tokens);
        }
        allowed
    }

    fn accept(&mut self, token: u32) -> Result<()> {
        if self.stop_tokens.contains(&token) && self.is_complete() {
            return Ok(());
        }
        self.state = self
            .trie
            .advance(&self.grammar, &self.state, token)
            .ok_or_else(|| {
                Error::InvalidRequest(format!("token {token} is not allowed by the grammar here"))
            })?;
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.grammar.is_complete(&self.state)
    }
}
