use std::io::Write;
use std::path::Path;

use agent::db::Db;
use agent::llm::kernel::{self, Candidate, KernelChoice, Prepared};
use anyhow::{anyhow, bail, Context};

use kernels::akl::prefix::AklGrammar;
use kernels::constrain::{GrammarConstraint, TokenConstraint, TokenTrie};
use kernels::generate::{generate_constrained, GenerateOptions, Sampling};
use kernels::tokenizer::ChatMessage;

#[derive(clap::Args)]
pub struct Args {
    /// smollm2 | qwen-coder | gemma3 | PATH.gguf
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Constrain decoding to a grammar: `akl` allows only text that is (or can still
    /// become) one AKL program, and stops when the program is complete.
    #[arg(long, value_parser = ["akl"])]
    grammar: Option<String>,
    /// Run a discovered AKL program in place of exact attention: a `.akl` file, or a
    /// program id or hash prefix in the database (`--db`).
    #[arg(long)]
    kernel: Option<String>,
}

pub fn run(args: Args, db_path: &Path) -> anyhow::Result<()> {
    let candidate = (args.kernel.as_deref())
        .map(|reference| kernel_program(reference, db_path))
        .transpose()?;
    let mut model = super::load_model(&args.model)?;
    if let Some(candidate) = candidate {
        let prepared = Prepared::new(&candidate.text, &model)
            .with_context(|| format!("kernel {}", candidate.origin))?;
        prepared.apply(&mut model)?;
        eprintln!(
            "attention: {} (hash {}, {})",
            prepared.name,
            agent::db::short_hash(&prepared.hash),
            candidate.origin
        );
    }
    let tokenizer = &model.tokenizer;
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(&args.prompt));
        let template = model
            .chat_template
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{} has no chat template; drop --chat", args.model))?;
        tokenizer.encode_with_bos(&template.render(&messages, true)?)?
    } else {
        tokenizer.encode_with_bos(&args.prompt)?
    };
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_tokens: tokenizer.stop_ids().to_vec(),
    };
    let trie;
    let mut akl;
    let constraint: Option<&mut dyn TokenConstraint> = match args.grammar.as_deref() {
        Some(_) => {
            trie = TokenTrie::new(tokenizer);
            akl = GrammarConstraint::new(AklGrammar, &trie, &options.stop_tokens);
            Some(&mut akl)
        }
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    let generation = generate_constrained(&model, &prompt, &options, constraint, |piece| {
        // A closed pipe (`| head`) must not abort generation with a panic.
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    eprintln!(
        "prompt {} tokens at {:.1} tok/s; generated {} tokens at {:.1} tok/s ({:?})",
        generation.prompt_tokens,
        generation.prefill_tokens_per_second(),
        generation.tokens.len(),
        generation.decode_tokens_per_second(),
        generation.stop_reason,
    );
    Ok(())
}

/// The program `--kernel` names: a `.akl` file, or a stored program by id or hash prefix.
fn kernel_program(reference: &str, db_path: &Path) -> anyhow::Result<Candidate> {
    match KernelChoice::parse(reference).map_err(|why| anyhow!("--kernel {why}"))? {
        KernelChoice::Best => {
            bail!("--kernel takes a .akl file or a program id or hash prefix, not \"best\"")
        }
        KernelChoice::File(path) => kernel::file_candidate(&path),
        KernelChoice::Program(reference) => super::block_on(async {
            let db = Db::open_existing(db_path).await?;
            let found = kernel::program_candidate(&db, &reference).await;
            db.close().await?;
            found
        }),
    }
}
