//! llama.cpp as a speed peer: runs its `llama-bench` on a GGUF and reads the JSON it prints.
//!
//! `scripts/peer-llama-cpp` builds the binary into a cache folder; `LlamaBench::locate` finds
//! it there (or takes an explicit path). Each llama-bench test is a prompt of `n_prompt`
//! tokens (prefill, "pp"), or `n_gen` tokens generated one at a time (decode, "tg"), after
//! `n_depth` tokens already in the context; its throughput is tokens per second per run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use serde::Deserialize;

/// The llama-cpp-python sdist whose vendored llama.cpp `scripts/peer-llama-cpp` builds.
pub const VENDORED_VERSION: &str = "0.3.36";

/// One test llama-bench ran, as its `-o json` output reports it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BenchResult {
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Tokens in the context before the test (absent in versions without `-d`).
    #[serde(default)]
    pub n_depth: usize,
    pub n_threads: usize,
    /// Mean throughput over the repetitions, tokens per second.
    pub avg_ts: f64,
    /// Each repetition's throughput, tokens per second.
    pub samples_ts: Vec<f64>,
    #[serde(default)]
    pub build_commit: String,
    #[serde(default)]
    pub model_type: String,
}

/// What a llama-bench test measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestKind {
    /// A prompt of this many tokens in one batch.
    Prefill(usize),
    /// This many tokens generated one at a time.
    Decode(usize),
    /// `-pg`: a prompt then generated tokens, timed together.
    PromptThenDecode(usize, usize),
}

impl BenchResult {
    pub fn kind(&self) -> TestKind {
        match (self.n_prompt, self.n_gen) {
            (p, 0) => TestKind::Prefill(p),
            (0, g) => TestKind::Decode(g),
            (p, g) => TestKind::PromptThenDecode(p, g),
        }
    }
}

/// Parses llama-bench's `-o json` output: a JSON array with one object per test.
pub fn parse_json(text: &str) -> anyhow::Result<Vec<BenchResult>> {
    let results: Vec<BenchResult> = serde_json::from_str(text.trim())
        .context("llama-bench's output is not the JSON array of tests `-o json` prints")?;
    for r in &results {
        ensure!(
            !r.samples_ts.is_empty() && r.samples_ts.iter().all(|t| t.is_finite() && *t > 0.0),
            "llama-bench test pp{} tg{} d{} has no positive samples_ts",
            r.n_prompt,
            r.n_gen,
            r.n_depth
        );
    }
    Ok(results)
}

/// How llama.cpp's OpenMP threads wait for each other between ops. Spinning (the default) is
/// fastest on an idle machine; when other processes keep the cores busy, a spinning thread
/// holds a core its partner needs, and decode with 2 threads on 2 busy cores fell from about
/// 50 to 1 token per second here. Sleeping (`OMP_WAIT_POLICY=PASSIVE`) avoids that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OmpWait {
    Default,
    Passive,
}

/// A `llama-bench` binary.
#[derive(Clone, Debug)]
pub struct LlamaBench {
    binary: PathBuf,
}

impl LlamaBench {
    /// `explicit` if given, else `$EVOKERNEL_LLAMA_BENCH`, else where `scripts/peer-llama-cpp`
    /// puts it (under `$EVOKERNEL_LLAMA_CPP_DIR`, default `~/.cache/evokernel/llama.cpp`).
    pub fn locate(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let binary = match explicit {
            Some(path) => path.to_path_buf(),
            None => match std::env::var_os("EVOKERNEL_LLAMA_BENCH") {
                Some(path) => PathBuf::from(path),
                None => default_binary()?,
            },
        };
        if !binary.is_file() {
            bail!(
                "llama-bench not found at {}; build it with `scripts/peer-llama-cpp` \
                 (about ten minutes) or pass --llama-bench PATH",
                binary.display()
            );
        }
        Ok(Self { binary })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Whether this build has `-d` (tests after a filled context); older ones only have `-pg`.
    pub fn has_depth_option(&self) -> anyhow::Result<bool> {
        let output = Command::new(&self.binary)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", self.binary.display()))?;
        let help = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        Ok(help.contains("--n-depth"))
    }

    /// Runs llama-bench on `model` with `threads` threads, `repeats` repetitions per test, and
    /// `args` choosing the tests (e.g. `-p 512 -n 128`), and returns its tests. `wait` sets how
    /// its OpenMP threads wait at the barrier between ops.
    pub fn run(
        &self,
        model: &Path,
        threads: usize,
        repeats: usize,
        wait: OmpWait,
        args: &[String],
    ) -> anyhow::Result<Vec<BenchResult>> {
        let mut command = Command::new(&self.binary);
        if let OmpWait::Passive = wait {
            command.env("OMP_WAIT_POLICY", "PASSIVE");
        }
        command
            .arg("-m")
            .arg(model)
            .args(["-t", &threads.to_string(), "-r", &repeats.to_string()])
            .args(["-o", "json"])
            .args(args);
        let output = command
            .output()
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.binary.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        parse_json(&String::from_utf8_lossy(&output.stdout))
    }
}

fn default_binary() -> anyhow::Result<PathBuf> {
    let cache = match std::env::var_os("EVOKERNEL_LLAMA_CPP_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").context(
                "HOME is not set; pass --llama-bench PATH or set EVOKERNEL_LLAMA_CPP_DIR",
            )?;
            PathBuf::from(home).join(".cache/evokernel/llama.cpp")
        }
    };
    Ok(cache.join(VENDORED_VERSION).join("build/bin/llama-bench"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `llama-bench -m SmolLM2-135M-Instruct-Q4_1.gguf -t 2 -r 3 -o json
    /// -p 512 -n 128` and `-p 0 -n 128 -d 512` (llama.cpp vendored in llama-cpp-python 0.3.36).
    const SAMPLE: &str = include_str!("llama_bench_sample.json");

    #[test]
    fn parses_a_captured_run() {
        let results = parse_json(SAMPLE).unwrap();
        let kinds: Vec<(TestKind, usize)> = results.iter().map(|r| (r.kind(), r.n_depth)).collect();
        assert_eq!(
            kinds,
            [
                (TestKind::Prefill(512), 0),
                (TestKind::Decode(128), 0),
                (TestKind::Decode(128), 512)
            ]
        );
        for r in &results {
            assert_eq!(r.n_threads, 2);
            assert_eq!(r.samples_ts.len(), 3);
            let mean = r.samples_ts.iter().sum::<f64>() / 3.0;
            assert!((mean - r.avg_ts).abs() < 1e-3 * r.avg_ts, "{r:?}");
        }
    }

    #[test]
    fn rejects_output_that_is_not_a_test_list() {
        for bad in ["", "{}", "[{\"n_prompt\": 512}]", "| model | size |"] {
            assert!(parse_json(bad).is_err(), "{bad:?}");
        }
        let no_samples = r#"[{"n_prompt": 512, "n_gen": 0, "n_threads": 2, "avg_ts": 1.0,
            "samples_ts": []}]"#;
        let err = parse_json(no_samples).unwrap_err().to_string();
        assert!(err.contains("samples_ts"), "{err}");
    }

    #[test]
    fn older_output_without_depth_reads_as_depth_zero() {
        let old = r#"[{"n_prompt": 512, "n_gen": 128, "n_threads": 1, "avg_ts": 50.0,
            "samples_ts": [49.0, 51.0]}]"#;
        let results = parse_json(old).unwrap();
        assert_eq!(results[0].n_depth, 0);
        assert_eq!(results[0].kind(), TestKind::PromptThenDecode(512, 128));
    }
}
