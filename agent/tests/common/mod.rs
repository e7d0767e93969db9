//! What the oracle tests share: the real prompt and the comparison of two engines' logits.

use kernels::assets::{self, Asset};
use kernels::generate::argmax;
use kernels::perplexity::log_sum_exp;
use kernels::{Logits, Model};

use agent::peer::PeerModel;

/// Runs one model comparison at a time: each engine already uses every core, and
/// candle's thread pool slows down many times over when two runs share the cores.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The opening of Pride and Prejudice, about 300 tokens: real prose, not a toy prompt.
pub fn prompt_text() -> String {
    let dir = assets::AUSTEN.require().unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(dir.join("pride-and-prejudice.txt")).expect("read novel");
    let start = text
        .find("It is a truth universally acknowledged")
        .expect("opening line");
    text[start..].chars().take(1400).collect()
}

/// How far one step's logits are apart.
#[derive(Debug, Clone, Copy)]
pub struct Difference {
    pub max_abs: f32,
    pub max_abs_logit: f32,
    /// KL(peer || ours) of the next-token distributions, in nats.
    pub kl: f64,
    pub top1_agree: bool,
}

impl Difference {
    pub fn of(ours: &[f32], theirs: &[f32]) -> Self {
        assert_eq!(ours.len(), theirs.len(), "vocabulary sizes differ");
        let (log_ours, log_theirs) = (log_softmax(ours), log_softmax(theirs));
        let kl = log_theirs
            .iter()
            .zip(&log_ours)
            .map(|(t, o)| t.exp() * (t - o))
            .sum();
        Self {
            max_abs: ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max),
            max_abs_logit: theirs.iter().map(|v| v.abs()).fold(0.0, f32::max),
            kl,
            top1_agree: argmax(ours) == argmax(theirs),
        }
    }

    pub fn relative(&self) -> f32 {
        self.max_abs / self.max_abs_logit
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let log_sum = log_sum_exp(logits);
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

/// Prefill on the real prompt, then `generated` greedy steps. Both engines are fed the
/// peer's greedy choice, so they always see the same tokens: where every step's top-1
/// agrees, each engine's own free-running generation is identical too. Returns the prefill
/// difference, the worst decode difference, and both engines' greedy ids at every step.
pub struct Run {
    pub prompt_tokens: usize,
    pub prefill: Difference,
    /// The decode step with the largest KL.
    pub worst_decode: Difference,
    pub ours: Vec<u32>,
    pub theirs: Vec<u32>,
}

pub fn run_both(asset: Asset, model: &Model, peer: &mut PeerModel, generated: usize) -> Run {
    let prompt = model.tokenizer.encode_with_bos(&prompt_text()).unwrap();
    assert!(
        prompt.len() >= 200,
        "prompt has only {} tokens",
        prompt.len()
    );
    let mut cache = model.new_cache();
    let mut ours = model.forward(&mut cache, &prompt, Logits::Last).unwrap();
    let mut theirs = peer.forward(&prompt, 0).unwrap();
    let prefill = Difference::of(&ours, &theirs);
    let mut worst_decode = prefill;
    let (mut ours_ids, mut their_ids) = (Vec::new(), Vec::new());
    for step in 0..generated {
        let b = argmax(&theirs);
        ours_ids.push(argmax(&ours));
        their_ids.push(b);
        if step + 1 == generated {
            break;
        }
        ours = model.forward(&mut cache, &[b], Logits::Last).unwrap();
        theirs = peer.forward(&[b], prompt.len() + step).unwrap();
        let d = Difference::of(&ours, &theirs);
        if d.kl > worst_decode.kl {
            worst_decode = d;
        }
    }
    let run = Run {
        prompt_tokens: prompt.len(),
        prefill,
        worst_decode,
        ours: ours_ids,
        theirs: their_ids,
    };
    eprintln!(
        "{}: prompt {} tokens; prefill max |Δlogit| {:.3e} of max |logit| {:.2} (relative {:.2e}), KL {:.2e}, top-1 agree {}; \
         worst decode step relative {:.2e}, KL {:.2e}; top-1 agrees at {} of {} greedy steps",
        asset.name,
        run.prompt_tokens,
        prefill.max_abs,
        prefill.max_abs_logit,
        prefill.relative(),
        prefill.kl,
        prefill.top1_agree,
        run.worst_decode.relative(),
        run.worst_decode.kl,
        run.ours.iter().zip(&run.theirs).filter(|(a, b)| a == b).count(),
        generated,
    );
    run
}
