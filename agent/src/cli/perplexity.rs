use std::path::PathBuf;

use kernels::perplexity::{perplexity, PerplexityOptions};

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
    let report = perplexity(&model, &tokens, options)?;
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
