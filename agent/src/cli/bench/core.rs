//! `evokernel bench core`: our core against candle-transformers (same process, same thread
//! pool) and, with `--peer llama.cpp`, against llama.cpp's `llama-bench`, on the same GGUF
//! with the same thread count, teacher-forced on the same tokens so all do the same work.
//!
//! Three tests, as llama-bench names them: prefill of a prompt (`pp512`), decode from an
//! empty context (`tg128`), and decode after the prompt (`tg128 @ d512`). The engines take
//! turns, one repetition each per round, so that the machine's load drifts over all alike.
//! llama.cpp runs each round twice, its threads spinning and sleeping between ops, and keeps
//! the faster of the two per test (see `OmpWait`).

use std::time::Instant;

use anyhow::Context;
use kernels::{KvCache, Logits, Model};

use agent::peer::llama_cpp::{BenchResult, LlamaBench, OmpWait, TestKind, VENDORED_VERSION};
use agent::peer::PeerModel;

use super::median;

#[derive(clap::Args)]
pub struct CoreArgs {
    /// smollm2 | qwen-coder | gemma3 | PATH.gguf
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Prompt length for prefill, and the context decode runs after in the third test.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time in each decode test.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Rounds; every engine runs each test once a round, and medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Rounds in which candle-transformers runs (default: all); it is slow on CPU.
    #[arg(long)]
    candle_repeats: Option<usize>,
    /// Skip the candle-transformers peer.
    #[arg(long, alias = "no-peer")]
    no_candle: bool,
    /// Also measure llama.cpp (`llama.cpp`): its llama-bench on the same file.
    #[arg(long, value_parser = ["llama.cpp"])]
    peer: Option<String>,
    /// The llama-bench binary (default: where `scripts/peer-llama-cpp` builds it).
    #[arg(long)]
    llama_bench: Option<std::path::PathBuf>,
    /// After the rounds, time each step of our forward pass on each test and print its share.
    #[arg(long)]
    profile: bool,
    #[arg(long)]
    json: bool,
}

/// The three tests' throughputs of one engine, tokens per second, one entry per round.
#[derive(Debug, Default, serde::Serialize)]
struct Runs {
    prefill: Vec<f64>,
    decode: Vec<f64>,
    decode_at_depth: Vec<f64>,
}

/// Medians of one engine's rounds.
#[derive(Debug, serde::Serialize)]
struct EngineSpeed {
    engine: String,
    prefill_tok_per_s: f64,
    decode_tok_per_s: f64,
    decode_at_depth_tok_per_s: f64,
    /// What the third column measures, where it is not decode after the context alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_at_depth_note: Option<String>,
    runs: Runs,
}

impl EngineSpeed {
    fn new(engine: String, runs: Runs) -> Self {
        EngineSpeed {
            engine,
            prefill_tok_per_s: median(&runs.prefill),
            decode_tok_per_s: median(&runs.decode),
            decode_at_depth_tok_per_s: median(&runs.decode_at_depth),
            decode_at_depth_note: None,
            runs,
        }
    }

    fn ratios(&self, peer: &EngineSpeed) -> [f64; 3] {
        [
            self.prefill_tok_per_s / peer.prefill_tok_per_s,
            self.decode_tok_per_s / peer.decode_tok_per_s,
            self.decode_at_depth_tok_per_s / peer.decode_at_depth_tok_per_s,
        ]
    }
}

/// The token streams every engine runs.
struct Workload<'a> {
    /// Decoded one at a time from an empty context.
    decode: &'a [u32],
    /// Prefilled in one call.
    prompt: &'a [u32],
    /// Decoded one at a time after `prompt`.
    continuation: &'a [u32],
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
    let work = Workload {
        decode: &tokens[..args.decode_tokens],
        prompt,
        continuation,
    };
    let threads = rayon::current_num_threads();
    let load_before = load_average();

    let mut candle = if args.no_candle {
        None
    } else {
        Some(PeerModel::load(&path).context("loading the candle-transformers peer")?)
    };
    let llama = match &args.peer {
        Some(_) => Some(LlamaPeer::new(
            LlamaBench::locate(args.llama_bench.as_deref())?,
            &work,
        )?),
        None => None,
    };

    // Warm-up: page the weights in and size the buffers, on a short prompt.
    let short = Workload {
        decode: &work.decode[..4.min(work.decode.len())],
        prompt: &work.prompt[..16.min(work.prompt.len())],
        continuation: &work.continuation[..4.min(work.continuation.len())],
    };
    run_ours(&model, &short)?;
    if let Some(peer) = candle.as_mut() {
        run_candle(peer, &short)?;
    }

    let candle_rounds = args.candle_repeats.unwrap_or(args.repeats);
    let (mut ours, mut theirs, mut llama_runs) =
        (Runs::default(), Runs::default(), Runs::default());
    let mut llama_build = String::new();
    for round in 1..=args.repeats {
        let r = run_ours(&model, &work)?;
        eprintln!("round {round}: evokernel {}", r.line());
        r.push_to(&mut ours);
        if let Some(peer) = candle.as_mut().filter(|_| round <= candle_rounds) {
            let r = run_candle(peer, &work)?;
            eprintln!("round {round}: candle-transformers {}", r.line());
            r.push_to(&mut theirs);
        }
        if let Some(llama) = &llama {
            let (r, build) = llama.run(&path, threads)?;
            eprintln!("round {round}: llama.cpp {}", r.line());
            r.push_to(&mut llama_runs);
            llama_build = build;
        }
    }

    let ours = EngineSpeed::new("evokernel".into(), ours);
    let candle = (!theirs.prefill.is_empty())
        .then(|| EngineSpeed::new("candle-transformers".into(), theirs));
    let llama = llama.map(|peer| {
        let build = match llama_build.as_str() {
            "" | "unknown" => format!("sources of llama-cpp-python {VENDORED_VERSION}"),
            commit => format!("build {commit}"),
        };
        let mut speed = EngineSpeed::new(format!("llama.cpp ({build})"), llama_runs);
        speed.decode_at_depth_note = peer.depth_note();
        speed
    });
    let profile = if args.profile {
        Some(profile_ours(&model, &work)?)
    } else {
        None
    };
    let load_after = load_average();

    let peers: Vec<&EngineSpeed> = llama.iter().chain(&candle).collect();
    if args.json {
        let ratios: serde_json::Map<String, serde_json::Value> = peers
            .iter()
            .map(|p| (p.engine.clone(), serde_json::json!(ours.ratios(p))))
            .collect();
        let engines: Vec<&EngineSpeed> = [&ours].into_iter().chain(peers.iter().copied()).collect();
        let json = serde_json::json!({
            "model": args.model,
            "file": path,
            "threads": threads,
            "prompt_tokens": work.prompt.len(),
            "decode_tokens": work.decode.len(),
            "rounds": args.repeats,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "engines": engines,
            "ratios_ours_over": ratios,
            "profile": profile.as_ref().map(|p| p.to_json()),
        });
        println!("{json}");
        return Ok(());
    }

    let (p, d) = (work.prompt.len(), work.decode.len());
    println!(
        "{} ({threads} threads): medians of {} rounds; load average {} before, {} after",
        args.model,
        args.repeats,
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
    );
    println!(
        "| engine | prefill pp{p} tok/s | decode tg{d} tok/s | decode tg{d} @ depth {p} tok/s |"
    );
    println!("|---|---|---|---|");
    for e in [&ours].into_iter().chain(peers.iter().copied()) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            e.engine, e.prefill_tok_per_s, e.decode_tok_per_s, e.decode_at_depth_tok_per_s
        );
    }
    for peer in &peers {
        let [a, b, c] = ours.ratios(peer);
        let name = peer.engine.split(' ').next().unwrap_or(&peer.engine);
        println!("| evokernel / {name} | {a:.2}× | {b:.2}× | {c:.2}× |");
    }
    for peer in &peers {
        if let Some(note) = &peer.decode_at_depth_note {
            println!("{}: {note}", peer.engine);
        }
    }
    if let Some(profile) = profile {
        profile.print();
    }
    Ok(())
}

/// One round's throughputs, tokens per second.
struct Round {
    prefill: f64,
    decode: f64,
    decode_at_depth: f64,
}

impl Round {
    fn from_seconds(work: &Workload<'_>, prefill: f64, decode: f64, at_depth: f64) -> Self {
        Round {
            prefill: work.prompt.len() as f64 / prefill,
            decode: work.decode.len() as f64 / decode,
            decode_at_depth: work.continuation.len() as f64 / at_depth,
        }
    }

    fn push_to(&self, runs: &mut Runs) {
        runs.prefill.push(self.prefill);
        runs.decode.push(self.decode);
        runs.decode_at_depth.push(self.decode_at_depth);
    }

    fn line(&self) -> String {
        format!(
            "prefill {:.1}, decode {:.1}, decode at depth {:.1} tok/s",
            self.prefill, self.decode, self.decode_at_depth
        )
    }
}

/// Times `f`, in seconds.
fn seconds(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed().as_secs_f64())
}

fn run_ours(model: &Model, work: &Workload<'_>) -> anyhow::Result<Round> {
    let mut cache: KvCache = model.new_cache();
    let decode = seconds(|| {
        for &t in work.decode {
            model.forward(&mut cache, &[t], Logits::Last)?;
        }
        Ok(())
    })?;
    let mut cache: KvCache = model.new_cache();
    let prefill = seconds(|| {
        model.forward(&mut cache, work.prompt, Logits::Last)?;
        Ok(())
    })?;
    let at_depth = seconds(|| {
        for &t in work.continuation {
            model.forward(&mut cache, &[t], Logits::Last)?;
        }
        Ok(())
    })?;
    Ok(Round::from_seconds(work, prefill, decode, at_depth))
}

fn run_candle(peer: &mut PeerModel, work: &Workload<'_>) -> anyhow::Result<Round> {
    // Position 0 starts a new sequence in candle-transformers' models.
    let decode = seconds(|| {
        for (i, &t) in work.decode.iter().enumerate() {
            peer.forward(&[t], i)?;
        }
        Ok(())
    })?;
    let prefill = seconds(|| {
        peer.forward(work.prompt, 0)?;
        Ok(())
    })?;
    let at_depth = seconds(|| {
        for (i, &t) in work.continuation.iter().enumerate() {
            peer.forward(&[t], work.prompt.len() + i)?;
        }
        Ok(())
    })?;
    Ok(Round::from_seconds(work, prefill, decode, at_depth))
}

/// llama-bench with the tests that match ours.
struct LlamaPeer {
    bench: LlamaBench,
    /// `-p P -n D`: prefill and decode from an empty context.
    plain: Vec<String>,
    /// `-p 0 -n D -d P` (decode after P tokens), or `-pg P,D` where `-d` is missing.
    at_depth: Vec<String>,
    has_depth: bool,
    prompt: usize,
    decode: usize,
}

impl LlamaPeer {
    fn new(bench: LlamaBench, work: &Workload<'_>) -> anyhow::Result<Self> {
        let (p, d) = (work.prompt.len(), work.decode.len());
        let has_depth = bench.has_depth_option()?;
        let at_depth = if has_depth {
            format!("-p 0 -n {d} -d {p}")
        } else {
            format!("-p 0 -n 0 -pg {p},{d}")
        };
        Ok(LlamaPeer {
            bench,
            plain: split(&format!("-p {p} -n {d}")),
            at_depth: split(&at_depth),
            has_depth,
            prompt: p,
            decode: d,
        })
    }

    /// One repetition of the three tests with llama.cpp's threads spinning and one with them
    /// sleeping between ops; each test keeps the faster, so the peer is at its best whatever
    /// the machine's load. Also returns the build's commit.
    fn run(&self, model: &std::path::Path, threads: usize) -> anyhow::Result<(Round, String)> {
        let (spin, commit) = self.run_with(model, threads, OmpWait::Default)?;
        let (sleep, _) = self.run_with(model, threads, OmpWait::Passive)?;
        let round = Round {
            prefill: spin.prefill.max(sleep.prefill),
            decode: spin.decode.max(sleep.decode),
            decode_at_depth: spin.decode_at_depth.max(sleep.decode_at_depth),
        };
        eprintln!(
            "  llama.cpp spinning: {}; sleeping: {}",
            spin.line(),
            sleep.line()
        );
        Ok((round, commit))
    }

    fn run_with(
        &self,
        model: &std::path::Path,
        threads: usize,
        wait: OmpWait,
    ) -> anyhow::Result<(Round, String)> {
        let mut results = self.bench.run(model, threads, 1, wait, &self.plain)?;
        results.extend(self.bench.run(model, threads, 1, wait, &self.at_depth)?);
        let find = |kind: TestKind, depth: usize| -> anyhow::Result<&BenchResult> {
            results
                .iter()
                .find(|r| r.kind() == kind && r.n_depth == depth)
                .with_context(|| format!("llama-bench reported no {kind:?} test at depth {depth}"))
        };
        let prefill = find(TestKind::Prefill(self.prompt), 0)?;
        let decode = find(TestKind::Decode(self.decode), 0)?;
        let at_depth = if self.has_depth {
            find(TestKind::Decode(self.decode), self.prompt)?
        } else {
            find(TestKind::PromptThenDecode(self.prompt, self.decode), 0)?
        };
        let round = Round {
            prefill: median(&prefill.samples_ts),
            decode: median(&decode.samples_ts),
            decode_at_depth: median(&at_depth.samples_ts),
        };
        Ok((round, prefill.build_commit.clone()))
    }

    fn depth_note(&self) -> Option<String> {
        (!self.has_depth).then(|| {
            format!(
                "this llama-bench has no -d; its third column is -pg {},{}: prompt and decode \
                 timed together, (prompt + decode tokens) / seconds",
                self.prompt, self.decode
            )
        })
    }
}

fn split(args: &str) -> Vec<String> {
    args.split_whitespace().map(str::to_string).collect()
}

/// The 1-, 5- and 15-minute load averages, as the kernel reports them.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Where our forward pass spends its time on each test, plus the work around it.
struct Profile {
    tests: Vec<(String, f64, Vec<kernels::profile::OpTime>)>,
    tokenizer_s_per_token: f64,
    sampling_s_per_token: f64,
}

/// Runs each test once more with the step timer on.
fn profile_ours(model: &Model, work: &Workload<'_>) -> anyhow::Result<Profile> {
    use kernels::profile;
    let mut tests = Vec::new();
    let mut once = |name: String, tokens: usize, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        profile::reset();
        profile::enable(true);
        let wall = seconds(f);
        profile::enable(false);
        tests.push((name, wall? / tokens as f64, profile::snapshot()));
        anyhow::Ok(())
    };
    let (p, d) = (work.prompt.len(), work.decode.len());
    let mut cache = model.new_cache();
    once(format!("pp{p}"), p, &mut || {
        model.forward(&mut cache, work.prompt, Logits::Last)?;
        Ok(())
    })?;
    once(format!("tg{d} @ depth {p}"), d, &mut || {
        for &t in work.continuation {
            model.forward(&mut cache, &[t], Logits::Last)?;
        }
        Ok(())
    })?;
    let mut cache = model.new_cache();
    once(format!("tg{d}"), d, &mut || {
        for &t in work.decode {
            model.forward(&mut cache, &[t], Logits::Last)?;
        }
        Ok(())
    })?;

    // The work a generation does outside the forward pass: encoding the prompt, and picking
    // each next token from the logits (top-p sampling, the engine's default kind).
    let text = crate::cli::read_text(&kernels::assets::AUSTEN.require()?.join("emma.txt"))?;
    let text: String = text.chars().take(20_000).collect();
    let started = Instant::now();
    let encoded = model.tokenizer.encode(&text, false)?;
    let tokenizer_s_per_token = started.elapsed().as_secs_f64() / encoded.len().max(1) as f64;
    let mut cache = model.new_cache();
    let logits = model.forward(&mut cache, &work.prompt[..1], Logits::Last)?;
    let mut sampler = kernels::generate::Sampler::new(kernels::generate::Sampling::default())?;
    let draws = 64;
    let started = Instant::now();
    for _ in 0..draws {
        std::hint::black_box(sampler.sample(&logits));
    }
    let sampling_s_per_token = started.elapsed().as_secs_f64() / draws as f64;
    Ok(Profile {
        tests,
        tokenizer_s_per_token,
        sampling_s_per_token,
    })
}

impl Profile {
    fn print(&self) {
        for (name, per_token, ops) in &self.tests {
            println!(
                "\nprofile, {name}: {:.3} ms per token in the forward pass; outside it, per token: \
                 tokenizer {:.1} µs, sampling {:.1} µs",
                per_token * 1e3,
                self.tokenizer_s_per_token * 1e6,
                self.sampling_s_per_token * 1e6
            );
            let total: f64 = ops.iter().map(|o| o.time.as_secs_f64()).sum();
            println!("| step | share | ms per token |");
            println!("|---|---|---|");
            let tokens = total / per_token;
            let mut ops = ops.clone();
            ops.sort_by_key(|o| std::cmp::Reverse(o.time));
            for o in &ops {
                let s = o.time.as_secs_f64();
                println!(
                    "| {} | {:.1}% | {:.3} |",
                    o.op.name(),
                    100.0 * s / total,
                    1e3 * s / tokens
                );
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let tests: Vec<serde_json::Value> = self
            .tests
            .iter()
            .map(|(name, per_token, ops)| {
                let steps: serde_json::Map<String, serde_json::Value> = ops
                    .iter()
                    .map(|o| (o.op.name(), serde_json::json!(o.time.as_secs_f64())))
                    .collect();
                serde_json::json!({"test": name, "s_per_token": per_token, "steps_s": steps})
            })
            .collect();
        serde_json::json!({
            "tests": tests,
            "tokenizer_s_per_token": self.tokenizer_s_per_token,
            "sampling_s_per_token": self.sampling_s_per_token,
        })
    }
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
