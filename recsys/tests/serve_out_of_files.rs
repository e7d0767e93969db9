//! The server in a process that has run out of file descriptors: accepting fails (EMFILE),
//! and the server neither stops nor spins; once descriptors are free again it answers. A
//! test binary of its own, because it lowers the whole process's open-file limit.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::checkpoint;
use recsys::serve::{app, run, ServeConfig};
use tokio::net::TcpStream;

/// CPU seconds this process has used, user and system, read from `/proc/self/stat` opened
/// beforehand (a process out of descriptors cannot open it).
fn cpu_seconds(stat: &File) -> f64 {
    let mut bytes = vec![0u8; 4096];
    let n = stat.read_at(&mut bytes, 0).unwrap();
    let stat = String::from_utf8_lossy(&bytes[..n]);
    // Fields after the command name, which ends at the last ')': utime and stime are the
    // 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_neither_stops_nor_spins() {
    let limit = libc::rlimit {
        rlim_cur: 128,
        rlim_max: 128,
    };
    // SAFETY: setrlimit reads only the struct on this stack.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let app = app(checkpoint(), ServeConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, app));

    let stat = File::open("/proc/self/stat").unwrap();
    // Fill the process's descriptor table, then free one for a client whose connection
    // the server then has no descriptor to accept, and nothing to shed for one.
    let mut files = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        files.push(file);
    }
    files.pop();
    let waiting = TcpStream::connect(addr).await.unwrap();

    let before = cpu_seconds(&stat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_seconds(&stat) - before;
    println!("out of descriptors for 1 s: {spent:.3} s of CPU");
    assert!(
        spent < 0.3,
        "the accept loop spun: {spent:.3} s of CPU in 1 s"
    );

    files.truncate(files.len().saturating_sub(16));
    drop(waiting);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the server answers once descriptors are free")
        .text()
        .await
        .unwrap();
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("recsys_accept_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(errors >= 1, "{metrics}");
    assert!(
        errors <= 30,
        "{errors} failed accepts in about a second: {metrics}"
    );
}
