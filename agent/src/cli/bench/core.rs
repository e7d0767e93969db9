//! `evokernel bench core`: our core against candle-transformers on the same GGUF, in the
//! same process and thread pool, teacher-forced on the same tokens so both do the same work.

use std::time::Instant;

use anyhow::Context;
use kernels::{KvCache, Logits, Model};

use agent::peer::PeerModel;

use super::median;

#[derive(clap::Args)]
pub struct CoreArgs {
    /// smollm2 | qwen-coder | gemma3 | PATH.gguf
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Repeats per engine; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Skip the candle-transformers peer.
    #[arg(long)]
    no_peer: bool,
    #[arg(long)]
    json: bool,
}

/// Medians of one engine's runs, in tokens per second.
#[derive(Debug, serde::Serialize)]
struct EngineSpeed {
    engine: &'static str,
    prefill_tok_per_s: f64,
    decode_tok_per_s: f64,
    prefill_runs: Vec<f64>,
    decode_runs: Vec<f64>,
}

pub fn run_core(args: CoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.repeats > 0 && args.prompt_tokens > 0 && args.decode_tokens > 0,
        "--repeats, --prompt-tokens and --decode-tokens must be positive"
    );
    let path = kernels::assets::resolve_model(&args.model)?;
    let model = Model::load(&path)?;
    let tokens = bench_tokens(&model, args.prompt_tokens + args.decode_tokens)?;
    let (prompt, continuation) = tokens.split_at(args.prompt_tokens);
    let threads = rayon::current_num_threads();

    let ours = measure(
        "evokernel",
        args.repeats,
        |_| {
            let mut cache: KvCache = model.new_cache();
            let started = Instant::now();
            model.forward(&mut cache, prompt, Logits::Last)?;
            let prefill = started.elapsed().as_secs_f64();
            let started = Instant::now();
            for &t in continuation {
                model.forward(&mut cache, &[t], Logits::Last)?;
            }
            Ok((prefill, started.elapsed().as_secs_f64()))
        },
        prompt.len(),
        continuation.len(),
    )?;

    let peer = if args.no_peer {
        None
    } else {
        let mut peer = PeerModel::load(&path).context("loading the candle-transformers peer")?;
        Some(measure(
            "candle-transformers",
            args.repeats,
            |_| {
                let started = Instant::now();
                peer.forward(prompt, 0)?;
                let prefill = started.elapsed().as_secs_f64();
                let started = Instant::now();
                for (i, &t) in continuation.iter().enumerate() {
                    peer.forward(&[t], prompt.len() + i)?;
                }
                Ok((prefill, started.elapsed().as_secs_f64()))
            },
            prompt.len(),
            continuation.len(),
        )?)
    };

    let engines: Vec<&EngineSpeed> = [&ours].into_iter().chain(peer.as_ref()).collect();
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "threads": threads,
            "prompt_tokens": prompt.len(),
            "decode_tokens": continuation.len(),
            "engines": engines,
            "prefill_ratio": peer.as_ref().map(|p| ours.prefill_tok_per_s / p.prefill_tok_per_s),
            "decode_ratio": peer.as_ref().map(|p| ours.decode_tok_per_s / p.decode_tok_per_s),
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "{} ({} threads): prefill {} tokens, decode {} tokens after it; median of {}",
        args.model,
        threads,
        prompt.len(),
        continuation.len(),
        args.repeats
    );
    println!("| engine | prefill tok/s | decode tok/s |");
    println!("|---|---|---|");
    for e in &engines {
        println!(
            "| {} | {:.1} | {:.1} |",
            e.engine, e.prefill_tok_per_s, e.decode_tok_per_s
        );
    }
    if let Some(p) = &peer {
        println!(
            "| ratio | {:.2}x | {:.2}x |",
            ours.prefill_tok_per_s / p.prefill_tok_per_s,
            ours.decode_tok_per_s / p.decode_tok_per_s
        );
    }
    Ok(())
}

/// Runs `once` `repeats` times after one warm-up; `once` returns (prefill s, decode s).
fn measure(
    engine: &'static str,
    repeats: usize,
    mut once: impl FnMut(usize) -> anyhow::Result<(f64, f64)>,
    prompt_len: usize,
    decode_len: usize,
) -> anyhow::Result<EngineSpeed> {
    once(0)?;
    let mut prefill_runs = Vec::new();
    let mut decode_runs = Vec::new();
    for i in 0..repeats {
        let (prefill, decode) = once(i + 1)?;
        prefill_runs.push(prompt_len as f64 / prefill);
        decode_runs.push(decode_len as f64 / decode);
        eprintln!(
            "{engine} run {}: prefill {:.1} tok/s, decode {:.1} tok/s",
            i + 1,
            prefill_runs[i],
            decode_runs[i]
        );
    }
    Ok(EngineSpeed {
        engine,
        prefill_tok_per_s: median(&prefill_runs),
        decode_tok_per_s: median(&decode_runs),
        prefill_runs,
        decode_runs,
    })
}

/// Real text for the benchmark: the opening of Austen's Emma.
fn bench_tokens(model: &Model, n: usize) -> anyhow::Result<Vec<u32>> {
    let dir = kernels::assets::AUSTEN.require()?;
    let text = crate::cli::read_text(&dir.join("emma.txt"))?;
    let tokens = model.tokenizer.encode_with_bos(&text)?;
    anyhow::ensure!(
        tokens.len() >= n,
        "emma.txt has only {} tokens, {n} needed",
        tokens.len()
    );
    Ok(tokens[..n].to_vec())
}
