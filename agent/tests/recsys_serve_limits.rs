//! `evokernel recsys serve` as a child process, spoken to over loopback as an operator's
//! clients would: with an open-file limit of 256 it stays reachable beside 1000 idle and
//! 1000 half-sent connections, it refuses requests beyond `--max-in-flight` with a JSON 503
//! and `Retry-After`, and its thread count stays bounded under 64 concurrent clients.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recsys::data::{Dataset, Item, ItemMeta};
use recsys::model::{Checkpoint, SasRec, SasRecConfig, EXACT};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The server's open-file limit, soft and hard.
const SERVER_FILES: libc::rlim_t = 256;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("evokernel-serve-limits-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An untrained model over 400 films and 50 users, written as a checkpoint: serving does
/// not care about quality, and scoring 400 items is work enough to keep the pool busy.
fn write_checkpoint(dir: &Path) {
    let n_items = 400;
    let dataset = Dataset {
        name: "films".into(),
        items: (0..n_items)
            .map(|i| Item {
                raw_id: (1000 + i).to_string(),
                meta: ItemMeta {
                    title: format!("Film {i}"),
                    year: Some(1990),
                    genres: vec!["Drama".into()],
                },
            })
            .collect(),
        users: (0..50).map(|u| format!("u{u}")).collect(),
        histories: (0..50u32)
            .map(|u| (0..30).map(|j| (u * 7 + j * 3) % n_items as u32).collect())
            .collect(),
    };
    let config = SasRecConfig {
        n_items,
        max_len: 32,
        d_model: 32,
        n_blocks: 2,
        n_heads: 2,
        d_ff: 64,
        dropout: 0.0,
    };
    Checkpoint {
        model: SasRec::new(config, EXACT, 5).unwrap(),
        dataset,
        report: None,
        kernel_source: None,
    }
    .save(dir)
    .unwrap();
}

/// A running `evokernel recsys serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on a fresh checkpoint with an open-file limit of 256 and `flags`,
    /// and waits for the address it prints.
    fn start(test: &str, flags: &[&str]) -> Server {
        let dir = scratch(test);
        let checkpoint = dir.join("ckpt");
        write_checkpoint(&checkpoint);
        let mut command = Command::new(env!("CARGO_BIN_EXE_evokernel"));
        command
            .args(["--db", dir.join("none.db").to_str().unwrap()])
            .args(["recsys", "serve", "--addr", "127.0.0.1:0", "--checkpoint"])
            .arg(&checkpoint)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec the closure only calls setrlimit, which is
        // async-signal-safe, on a struct on its own stack.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: SERVER_FILES,
                    rlim_max: SERVER_FILES,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start evokernel");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the server prints its address before it ends")
                .unwrap();
            if let Some(rest) = line.split("on http://").nth(1) {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base }
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Raises this process's own soft open-file limit to its hard limit, and returns it.
fn raise_own_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct on this stack.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// A metric's value on its one line, such as `recsys_connections_open`.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The median of `values`, sorting them.
fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// One recommendation on a fresh connection: status and time to the whole answer.
async fn recommend_once(base: &str, user: usize) -> (u16, Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/recommend"))
        .json(&json!({"user_id": format!("u{}", user % 50), "k": 10}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_answered_beside_1000_idle_and_1000_half_sent_connections() {
    let own_limit = raise_own_file_limit();
    assert!(
        own_limit >= 2200,
        "the test needs 2200 open files, its hard limit is {own_limit}"
    );
    let server = Server::start("crowd", &[]);
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        // The server may already have shed it: a failed write is part of the game.
        let _ = stream
            .write_all(b"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-")
            .await;
        held.push(stream);
    }
    let mut latencies = Vec::new();
    for user in 0..20 {
        let (status, took) = recommend_once(&server.base, user).await;
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(2),
            "request {user} took {took:?} beside 2000 held connections"
        );
        latencies.push(took);
    }
    let metrics = server.metrics().await;
    let shed = metric(&metrics, "recsys_connections_closed_total{reason=\"shed\"}");
    let open = metric(&metrics, "recsys_connections_open");
    println!(
        "beside 1000 idle and 1000 half-sent connections (server open-file limit {SERVER_FILES}): \
         median {:?}, max {:?} over 20 requests; {shed} connections shed, {open} open",
        median(&mut latencies),
        latencies.iter().max().unwrap()
    );
    assert!(shed >= 1000.0, "{metrics}");
    assert!(open < SERVER_FILES as f64, "{metrics}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_in_flight_get_a_json_503_with_retry_after() {
    let server = Server::start("in-flight", &["--max-in-flight", "1"]);
    // A request whose body is still arriving is in flight.
    let mut held = TcpStream::connect(server.addr()).await.unwrap();
    held.write_all(
        b"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let response = reqwest::get(format!("{}/healthz", server.base))
            .await
            .unwrap();
        if response.status() == 503 || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["content-type"], "application/json");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("as many requests as it may (1)"),
        "{body}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let response = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap();
        if response.status() == 200 || Instant::now() > deadline {
            break response.text().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        metrics.contains("recsys_requests_total{route=\"/healthz\",status=\"503\"}"),
        "{metrics}"
    );
}

/// The server's thread count and memory, from /proc.
fn threads_and_memory(pid: u32) -> (usize, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    (
        field("Threads:").parse().unwrap(),
        format!("VmRSS {}, VmHWM {}", field("VmRSS:"), field("VmHWM:")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_stay_bounded_under_64_concurrent_clients() {
    let server = Server::start("threads", &["--threads", "2"]);
    let (before, memory_before) = threads_and_memory(server.pid());
    let clients: Vec<_> = (0..64)
        .map(|c| {
            let base = server.base.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let until = Instant::now() + Duration::from_secs(3);
                let mut answered = 0;
                while Instant::now() < until {
                    let response = client
                        .post(format!("{base}/v1/recommend"))
                        .json(&json!({"user_id": format!("u{}", c % 50), "k": 10}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    response.bytes().await.unwrap();
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut most = before;
    while clients.iter().any(|c| !c.is_finished()) {
        most = most.max(threads_and_memory(server.pid()).0);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    let (_, memory_after) = threads_and_memory(server.pid());
    // main, the async workers (one per core), the two compute threads, tokio's capped
    // blocking pool, and a few to spare.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound = 1 + cores + 2 + 2 + 4;
    println!(
        "64 clients, {answered} answers in 3 s: threads {before} at rest, at most {most} \
         (bound {bound}); before: {memory_before}; after: {memory_after}"
    );
    assert!(answered > 64);
    assert!(
        most <= bound,
        "{most} threads under 64 clients (bound {bound})"
    );
}
