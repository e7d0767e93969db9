//! RecGPT enrichment on the real SmolLM2-135M-Instruct and real data: the batch runner on
//! MovieLens-100K stops part-way and resumes without asking again, a rerun gets the same
//! replies, and `recsys enrich` → `recsys eval --alpha` → `recsys serve` work end to end.

mod db_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use agent::db::Db;
use agent::llm::local::LocalLlm;
use agent::recgpt::{Enricher, Plan, RunOptions};
use db_common::ScratchDir;
use indicatif::ProgressBar;
use kernels::assets;
use recsys::data::{Dataset, LoadOptions};

fn smollm2() -> Arc<LocalLlm> {
    let path = assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(LocalLlm::load(&path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_resumes_without_asking_again_and_reruns_agree() {
    let data = assets::MOVIELENS_100K
        .require()
        .unwrap_or_else(|e| panic!("{e}"));
    let dataset = Dataset::load(&data, &LoadOptions::default()).unwrap();
    let llm = smollm2();
    let dir = ScratchDir::new("recgpt-smollm2");
    let db = Db::open(&dir.db()).await.unwrap();
    let enricher = Enricher::new(&db, llm.clone(), &dataset);
    let key = enricher.key().clone();
    assert!(key.dataset.starts_with("ml-100k@"), "{key:?}");
    let plan = Plan {
        items: vec![0, 1, 2],
        users: vec![0, 1],
        explanations: vec![(0, 10), (1, 11)],
    };
    let bar = ProgressBar::hidden();

    let stopping = RunOptions {
        max_new: Some(4),
        ..Default::default()
    };
    let first = enricher.run(&plan, &stopping, &bar).await.unwrap();
    assert!(first.stopped);
    assert_eq!((first.item_tags.made, first.profiles.made), (3, 1));
    assert_eq!(first.explanations.made, 0);
    let tags_before = db.item_tags(&key).await.unwrap();
    let profiles_before = db.profiles(&key).await.unwrap();
    assert_eq!((tags_before.len(), profiles_before.len()), (3, 1));

    let second = enricher
        .run(&plan, &RunOptions::default(), &bar)
        .await
        .unwrap();
    assert!(!second.stopped);
    assert_eq!((second.item_tags.made, second.item_tags.skipped), (0, 3));
    assert_eq!((second.profiles.made, second.profiles.skipped), (1, 1));
    assert_eq!(
        second.explanations.made + second.explanations_without_profile,
        2
    );
    let counts = db.enrichment_counts(&key).await.unwrap();
    assert_eq!((counts.item_tags, counts.profiles), (3, 2));
    assert_eq!(counts.explanations as usize, second.explanations.made);
    assert_eq!(
        &db.item_tags(&key).await.unwrap()[..],
        &tags_before[..],
        "rows made before the stop are kept as they were"
    );
    assert_eq!(db.profiles(&key).await.unwrap()[0], profiles_before[0]);

    let third = enricher
        .run(&plan, &RunOptions::default(), &bar)
        .await
        .unwrap();
    let made = third.item_tags.made + third.profiles.made + third.explanations.made;
    assert_eq!(made, 0, "a finished plan asks nothing: {third:?}");

    // The replies are usable: greedy SmolLM2 follows the requested shape.
    let tags = db.item_tags(&key).await.unwrap();
    let profiles = db.profiles(&key).await.unwrap();
    let explanations = db.explanations(&key).await.unwrap();
    for t in &tags {
        eprintln!("item {}: {:?} <- {:?}", t.item_id, t.tags, t.reply);
    }
    for p in &profiles {
        eprintln!(
            "user {}: {:?} {:?} <- {:?}",
            p.user_id, p.profile, p.tags, p.reply
        );
    }
    for e in &explanations {
        eprintln!("{} / {}: {:?}", e.user_id, e.item_id, e.sentence);
    }
    assert!(tags.iter().filter(|t| !t.tags.is_empty()).count() >= 2);
    assert!(profiles
        .iter()
        .any(|p| !p.tags.is_empty() && !p.profile.is_empty()));
    assert!(explanations.iter().any(|e| !e.sentence.is_empty()));

    // Greedy decoding with a fixed seed: a fresh database gets the same reply.
    let fresh_dir = ScratchDir::new("recgpt-smollm2-rerun");
    let fresh = Db::open(&fresh_dir.db()).await.unwrap();
    let again = Enricher::new(&fresh, llm, &dataset);
    let one = Plan {
        items: vec![1],
        ..Plan::default()
    };
    again.run(&one, &RunOptions::default(), &bar).await.unwrap();
    assert_eq!(fresh.item_tags(&key).await.unwrap()[0].reply, tags[1].reply);
}

fn evokernel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .args(args)
        .output()
        .expect("run evokernel")
}

fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

const TITLES: [(&str, &str, &str); 8] = [
    ("Toy Story", "1995", "Animation Children's Comedy"),
    ("GoldenEye", "1995", "Action Adventure Thriller"),
    ("Heat", "1995", "Action Crime Thriller"),
    ("Babe", "1995", "Children's Comedy Drama"),
    ("Casablanca", "1942", "Drama Romance War"),
    ("Alien", "1979", "Action Horror Sci-Fi"),
    ("Fargo", "1996", "Crime Drama Thriller"),
    ("Star Wars", "1977", "Action Adventure Romance Sci-Fi War"),
];

/// Six users walking eight films, as RecBole atomic files with titles, years and genres.
fn films(dir: &Path) -> PathBuf {
    let data = dir.join("films");
    std::fs::create_dir_all(&data).unwrap();
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    for user in 0..6 {
        for step in 0..6 {
            let item = (user * 3 + step) % 8 + 1;
            inter += &format!("{}\t{item}\t4\t{}\n", user + 1, 1000 + step);
        }
    }
    std::fs::write(data.join("films.inter"), inter).unwrap();
    let mut item =
        String::from("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n");
    for (i, (title, year, genres)) in TITLES.iter().enumerate() {
        item += &format!("{}\t{title}\t{year}\t{genres}\n", i + 1);
    }
    std::fs::write(data.join("films.item"), item).unwrap();
    data
}

/// Kills the server started by the test when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_then_fused_eval_then_serve_explanations_from_the_cli() {
    let dir = ScratchDir::new("recgpt-cli");
    let data = films(dir.path());
    let ckpt = dir.path().join("ckpt");
    let db = dir.db();
    let (data, ckpt_arg, db_arg) = (
        data.to_str().unwrap(),
        ckpt.to_str().unwrap(),
        db.to_str().unwrap(),
    );
    let trained = evokernel(&[
        "recsys",
        "train",
        "--data",
        data,
        "--out",
        ckpt_arg,
        "--epochs",
        "2",
        "--d-model",
        "16",
        "--max-len",
        "8",
        "--batch-size",
        "8",
        "--seed",
        "3",
    ]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let enrich_args = [
        "--db",
        db_arg,
        "recsys",
        "enrich",
        "--explain-checkpoint",
        ckpt_arg,
        "--users",
        "3",
        "--k",
        "2",
        "--json",
    ];
    let enriched = stdout_json(&evokernel(&enrich_args));
    assert_eq!(enriched["run"]["profiles"]["made"], 3, "{enriched}");
    assert_eq!(enriched["stored"]["profiles"], 3, "{enriched}");
    let explained = enriched["run"]["explanations"]["made"].as_u64().unwrap()
        + enriched["run"]["explanations_without_profile"]
            .as_u64()
            .unwrap();
    assert_eq!(explained, 6, "3 users × k = 2: {enriched}");

    let again = stdout_json(&evokernel(&enrich_args));
    assert_eq!(again["run"]["profiles"]["skipped"], 3, "{again}");
    assert_eq!(again["run"]["item_tags"]["made"], 0, "{again}");

    let eval = stdout_json(&evokernel(&[
        "--db",
        db_arg,
        "recsys",
        "eval",
        "--checkpoint",
        ckpt_arg,
        "--alpha",
        "1,0.5",
        "--json",
    ]));
    let fused = &eval["fused"];
    assert!(fused["users"].as_u64().unwrap() >= 1, "{fused}");
    assert_eq!(fused["alphas"][0]["alpha"], 1.0);
    assert_eq!(
        fused["alphas"][0]["report"], fused["plain"],
        "α = 1 is the plain model"
    );

    let bad = evokernel(&[
        "--db",
        db_arg,
        "recsys",
        "eval",
        "--checkpoint",
        ckpt_arg,
        "--alpha",
        "2",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--alpha"));

    // The server answers `explain: true` with the sentence cached for (user, item).
    let cached = {
        let db = Db::open_existing(&db).await.unwrap();
        let dataset = recsys::model::Checkpoint::load(&ckpt).unwrap().dataset;
        let key = agent::recgpt::enrichment_key(&dataset, &agent::recgpt::model_name("smollm2"));
        db.explanations(&key).await.unwrap()
    };
    let Some(said) = cached.iter().find(|e| !e.sentence.is_empty()) else {
        panic!("SmolLM2 wrote no usable explanation: {cached:?}");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_evokernel"))
            .args([
                "--db",
                db_arg,
                "recsys",
                "serve",
                "--checkpoint",
                ckpt_arg,
                "--addr",
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the server did not come up on {addr}");
    let body: serde_json::Value = client
        .post(format!("{base}/v1/recommend"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"user_id": said.user_id, "k": 2, "explain": true}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item_id"] == said.item_id.as_str())
        .unwrap_or_else(|| panic!("item {} not recommended: {body}", said.item_id));
    assert_eq!(item["reason"], said.sentence.as_str(), "{body}");
}
