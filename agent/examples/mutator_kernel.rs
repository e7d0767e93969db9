//! What a kernel changes for the local mutator model: the same mutation prompts (code
//! prompts built from library programs, as the gate falls back to) answered by
//! Qwen2.5-Coder with exact attention and with the kernel, same seeds, AKL grammar on, as a
//! campaign runs them. Prints per prompt, then the pass rate (what `akl::parse_and_check`
//! accepts of the extracted program), reply throughput, the gate's KL and the KV cache
//! each run allocates.
//!
//! ```text
//! cargo run --release -p agent --example mutator_kernel -- KERNEL.akl [PROMPTS] [MAX_TOKENS] [DUMP_DIR]
//! ```
//! `DUMP_DIR` receives each prompt's system and user messages (for `evokernel generate`).

use std::path::PathBuf;

use agent::llm::extract::extract_program;
use agent::llm::kernel::{built_prompts, file_candidate, GATE_PROMPTS};
use agent::llm::local::LocalLlm;
use agent::llm::Request;

const TASK: &str = "Replace the attention of the smollm2 language model. A kernel passes when \
its worst mean next-token KL divergence from exact attention is at most 0.1 nats. A passing \
kernel scores its flops_reduction at 512 tokens; higher is better.";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kernel = PathBuf::from(
        args.first()
            .expect("usage: KERNEL.akl [PROMPTS] [MAX_TOKENS]"),
    );
    let n: usize = args.get(1).map_or(Ok(20), |a| a.parse())?;
    let max_tokens: usize = args.get(2).map_or(Ok(320), |a| a.parse())?;
    let path = kernels::assets::QWEN_CODER.require()?;
    let prompts = built_prompts(TASK, n);
    if let Some(dir) = args.get(3) {
        std::fs::create_dir_all(dir)?;
        for (i, p) in prompts.iter().enumerate() {
            std::fs::write(format!("{dir}/{i}.system"), &p.system)?;
            std::fs::write(format!("{dir}/{i}.user"), &p.user)?;
        }
    }
    let exact = LocalLlm::load(&path)?;
    let (on_kernel, outcomes) = LocalLlm::load_gated(
        &path,
        &[file_candidate(&kernel)?],
        &prompts[..GATE_PROMPTS.min(n)],
        f64::INFINITY,
    )?;
    println!("gate on {} prompts: {}", GATE_PROMPTS.min(n), outcomes[0]);
    let config = &exact.model().config;
    let kv_bytes_per_position = config.n_layers() * 2 * config.n_kv_heads * config.head_dim * 4;

    let mut rows: Vec<[Row; 2]> = Vec::new();
    println!("prompt  tokens  | exact: pass  new  tok/s | kernel: pass  new  tok/s | same text");
    for (i, p) in prompts.iter().enumerate() {
        let request = Request {
            system: p.system.clone(),
            user: p.user.clone(),
            max_tokens,
            temperature: 0.7,
            seed: i as u64,
        };
        let run = |llm: &LocalLlm| -> anyhow::Result<Row> {
            let reply = llm.complete(&request, true)?;
            let passed = extract_program(&reply.text)
                .is_ok_and(|program| kernels::akl::parse_and_check(program).is_ok());
            Ok(Row {
                passed,
                prompt_tokens: reply.prompt_tokens,
                new_tokens: reply.completion_tokens,
                seconds: reply.seconds,
                text: reply.text,
            })
        };
        let pair = [run(&exact)?, run(&on_kernel)?];
        println!(
            "{i:>6}  {:>6}  |        {:>5}  {:>3}  {:>5.1} |         {:>5}  {:>3}  {:>5.1} | {}",
            pair[0].prompt_tokens,
            pair[0].passed,
            pair[0].new_tokens,
            pair[0].tok_per_s(),
            pair[1].passed,
            pair[1].new_tokens,
            pair[1].tok_per_s(),
            pair[0].text == pair[1].text
        );
        rows.push(pair);
    }
    for (k, label) in ["exact", "kernel"].iter().enumerate() {
        let passed = rows.iter().filter(|r| r[k].passed).count();
        let mut rates: Vec<f64> = rows.iter().map(|r| r[k].tok_per_s()).collect();
        rates.sort_by(f64::total_cmp);
        let longest = rows
            .iter()
            .map(|r| r[k].prompt_tokens + r[k].new_tokens)
            .max()
            .unwrap_or(0);
        // The cache grows by doubling from 256 positions and keeps every key.
        let capacity = longest.next_power_of_two().max(256);
        println!(
            "{label}: {passed}/{} programs pass parse+check; median {:.1} tok/s (reply tokens \
             over reply seconds, prefill included); longest conversation {longest} positions, \
             KV cache {capacity} positions = {} bytes",
            rows.len(),
            rates.get(rates.len() / 2).copied().unwrap_or(0.0),
            capacity * kv_bytes_per_position
        );
    }
    let same = rows.iter().filter(|r| r[0].text == r[1].text).count();
    println!("same reply text: {same}/{}", rows.len());
    Ok(())
}

struct Row {
    passed: bool,
    prompt_tokens: usize,
    new_tokens: usize,
    seconds: f64,
    text: String,
}

impl Row {
    fn tok_per_s(&self) -> f64 {
        self.new_tokens as f64 / self.seconds.max(1e-9)
    }
}
