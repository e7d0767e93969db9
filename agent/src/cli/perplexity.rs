use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use kernels::akl::{self, ModelShape};
use kernels::perplexity::{compare_kernels, perplexity, PerplexityOptions};
use kernels::Model;

#[derive(clap::Args)]
pub struct Args {
    /// smollm2 | qwen-coder | gemma3 | PATH.gguf
    #[arg(long)]
    model: String,
    /// UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Window advance (default: ctx / 2).
    #[arg(long)]
    stride: Option<usize>,
    /// Score at most this many tokens of the text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// An AKL program (e.g. kernels/library/sink_window.akl) to run in place of exact
    /// attention; the report then compares it with exact attention on the same windows.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = super::read_text(&args.text)?;
    let model = super::load_model(&args.model)?;
    let tokens = model.tokenizer.encode_with_bos(&text)?;
    let options = PerplexityOptions {
        ctx: args.ctx,
        stride: args.stride.unwrap_or((args.ctx / 2).max(1)),
        max_tokens: args.max_tokens,
    };
    match &args.kernel {
        Some(path) => run_kernel(&args, path, &model, &tokens, options),
        None => run_exact(&args, &model, &tokens, options),
    }
}

fn run_exact(
    args: &Args,
    model: &Model,
    tokens: &[u32],
    options: PerplexityOptions,
) -> anyhow::Result<()> {
    let report = perplexity(model, tokens, options)?;
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "tokens": report.tokens,
            "ppl": report.ppl,
            "nll": report.nll,
            "tok_per_s": report.tok_per_s,
        });
        println!("{json}");
    } else {
        println!(
            "{}: {} tokens, perplexity {:.4} (nll {:.4} nats/token), {:.1} tok/s",
            args.model, report.tokens, report.ppl, report.nll, report.tok_per_s
        );
    }
    Ok(())
}

/// Runs the program at `path` as a drop-in beside exact attention.
fn run_kernel(
    args: &Args,
    path: &std::path::Path,
    model: &Model,
    tokens: &[u32],
    options: PerplexityOptions,
) -> anyhow::Result<()> {
    let source = super::read_text(path)?;
    let checked =
        akl::parse_and_check(&source).with_context(|| format!("kernel {}", path.display()))?;
    let shape = ModelShape::of(&model.config);
    let drop_in = akl::instantiate(&checked, &shape, model.config.attention_scale)
        .with_context(|| format!("kernel {}", path.display()))?;
    // MLA changes the key and value projections: run it on a converted copy of the model.
    let converted = match drop_in.kv_rank {
        Some(rank) => {
            let mut copy = super::load_model(&args.model)?;
            kernels::trainable::mla::convert_model_kv(&mut copy, rank)?;
            Some(copy)
        }
        None => None,
    };
    let cost = akl::cost(&checked, &shape, args.ctx)?;
    let exact_cost = akl::exact_cost(&shape, args.ctx)?;

    let started = Instant::now();
    let report = compare_kernels(
        model,
        converted.as_ref().unwrap_or(model),
        &drop_in.kernels,
        tokens,
        options,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let name = &checked.program.name;
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "kernel": name,
            "kernel_hash": checked.program.canonical_hash(),
            "ctx": args.ctx,
            "tokens": report.tokens,
            "ppl": report.ppl,
            "ppl_exact": report.ppl_exact,
            "kl_vs_exact": report.kl_vs_exact,
            "kl_max": report.kl_max,
            "attn_flops_ratio": cost.flops / exact_cost.flops,
            "kv_bytes_held_ratio": cost.kv_bytes_held_per_token / exact_cost.kv_bytes_held_per_token,
            "seconds": seconds,
        });
        println!("{json}");
    } else {
        println!(
            "{} with {name} over {} tokens (ctx {}): perplexity {:.4} against exact {:.4}, \
             mean KL {:.5} nats/token (max {:.4}), attention FLOPs {:.3} of exact, \
             KV held {:.3} of exact; {seconds:.1} s",
            args.model,
            report.tokens,
            args.ctx,
            report.ppl,
            report.ppl_exact,
            report.kl_vs_exact,
            report.kl_max,
            cost.flops / exact_cost.flops,
            cost.kv_bytes_held_per_token / exact_cost.kv_bytes_held_per_token,
        );
    }
    Ok(())
}
