//! The discovered-kernel database: every table's inserts and queries, on SQLite files in
//! a scratch directory.

mod db_common;

use agent::campaign::Strategy;
use agent::db::{
    CampaignStatus, Db, Error, MutatorOutcome, NewCampaign, NewLlmCall, NewProgram, ProgramInsert,
};
use agent::pareto::Direction;
use db_common::{evaluation, ScratchDir};
use sqlx::Connection;

fn campaign<'a>(name: &'a str) -> NewCampaign<'a> {
    NewCampaign {
        name,
        config_toml: "name = \"x\"",
        seed: 7,
        strategy: Strategy::Evolve,
        config_dir: None,
    }
}

fn outcome(mutator: &str, improved: bool, reward: f64) -> MutatorOutcome<'_> {
    MutatorOutcome {
        mutator,
        improved,
        reward,
    }
}

fn program<'a>(campaign_id: i64, hash: &'a str, text: &'a str) -> NewProgram<'a> {
    NewProgram {
        campaign_id,
        hash,
        canonical_text: text,
        parent_id: None,
        second_parent_id: None,
        island: 0,
        generation: 0,
        mutator: "seed",
        proposal: None,
    }
}

/// A 64-digit hash starting with `prefix`.
fn hash(prefix: &str) -> String {
    format!("{prefix:0<64}")
}

async fn raw_connection(path: &std::path::Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn a_new_database_is_migrated_in_wal_mode_with_foreign_keys() {
    let dir = ScratchDir::new("db-open");
    let db = Db::open(&dir.db()).await.unwrap();
    assert_eq!(
        db.schema_version().await.unwrap(),
        Db::known_schema_version()
    );
    assert!(Db::known_schema_version() >= 1);
    db.create_campaign(&campaign("c")).await.unwrap();
    // Foreign keys are enforced: a program of no campaign is refused.
    let orphan = db
        .insert_program(&program(42, &hash("a"), "(kernel a)"))
        .await;
    assert!(matches!(orphan, Err(Error::Sql(_))), "{orphan:?}");
    db.close().await.unwrap();

    let mut raw = raw_connection(&dir.db()).await;
    // Closing folded the log into the file: a copy of the file alone has the rows.
    let copy = dir.path().join("copy.db");
    std::fs::copy(dir.db(), &copy).unwrap();
    let mut copied = raw_connection(&copy).await;
    let campaigns: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns")
        .fetch_one(&mut copied)
        .await
        .unwrap();
    assert_eq!(campaigns, 1);
    copied.close().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    raw.close().await.unwrap();

    // Opening again is a no-op migration.
    let again = Db::open_existing(&dir.db()).await.unwrap();
    assert_eq!(
        again.schema_version().await.unwrap(),
        Db::known_schema_version()
    );
    again.close().await.unwrap();
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused_naming_file_and_versions() {
    let dir = ScratchDir::new("db-newer");
    Db::open(&dir.db()).await.unwrap().close().await.unwrap();
    let mut raw = raw_connection(&dir.db()).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();

    let error = Db::open(&dir.db()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Error::NewerSchema { found: 9999, .. }),
        "{message}"
    );
    assert!(
        message.contains(&dir.db().display().to_string()),
        "{message}"
    );
    assert!(message.contains("9999"), "{message}");
    assert!(
        message.contains(&format!("version {}", Db::known_schema_version())),
        "{message}"
    );
}

#[tokio::test]
async fn opening_a_missing_database_for_queries_names_the_file() {
    let dir = ScratchDir::new("db-missing");
    let error = Db::open_existing(&dir.db()).await.unwrap_err();
    assert!(matches!(error, Error::Missing { .. }));
    assert!(error.to_string().contains(&dir.db().display().to_string()));
    assert!(!dir.db().exists(), "a query must not create the database");
}

#[tokio::test]
async fn campaigns_are_created_found_timed_and_closed() {
    let dir = ScratchDir::new("db-campaigns");
    let db = Db::open(&dir.db()).await.unwrap();
    let mut first = campaign("first");
    first.seed = u64::MAX;
    let a = db.create_campaign(&first).await.unwrap();
    let b = db.create_campaign(&campaign("2")).await.unwrap();
    assert!(matches!(
        db.create_campaign(&campaign("first")).await,
        Err(Error::CampaignExists(name)) if name == "first"
    ));

    let stored = db.campaign(a).await.unwrap();
    assert_eq!(stored.name, "first");
    assert_eq!(stored.seed, u64::MAX, "the seed survives bit for bit");
    assert_eq!(stored.status, CampaignStatus::Running);
    assert_eq!(stored.config_toml, "name = \"x\"");
    assert!(stored.finished_at.is_none());

    // By name, and by id; a campaign *named* "2" wins over id 2.
    assert_eq!(db.campaign_by_name("first").await.unwrap().id, a);
    assert_eq!(db.campaign_by_name(&a.to_string()).await.unwrap().id, a);
    assert_eq!(db.campaign_by_name("2").await.unwrap().id, b);
    assert!(matches!(
        db.campaign_by_name("nope").await,
        Err(Error::NoCampaign(_))
    ));
    assert_eq!(db.campaigns().await.unwrap().len(), 2);

    db.add_campaign_elapsed(a, 1.5).await.unwrap();
    db.add_campaign_elapsed(a, 2.0).await.unwrap();
    assert_eq!(db.campaign(a).await.unwrap().elapsed_seconds, 3.5);
    assert!(db.add_campaign_elapsed(999, 1.0).await.is_err());

    db.set_campaign_status(a, CampaignStatus::Stopped)
        .await
        .unwrap();
    let stopped = db.campaign(a).await.unwrap();
    assert_eq!(stopped.status, CampaignStatus::Stopped);
    assert!(stopped.finished_at.is_some());
    db.set_campaign_status(a, CampaignStatus::Running)
        .await
        .unwrap();
    assert!(
        db.campaign(a).await.unwrap().finished_at.is_none(),
        "resume reopens"
    );
    assert!(db
        .set_campaign_status(999, CampaignStatus::Failed)
        .await
        .is_err());
}

#[tokio::test]
async fn programs_are_deduplicated_per_campaign_and_found_by_id_or_hash_prefix() {
    let dir = ScratchDir::new("db-programs");
    let db = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let other = db.create_campaign(&campaign("other")).await.unwrap();

    let (h1, h2, h3) = (hash("ab1"), hash("ab2"), hash("c"));
    let p1 = db
        .insert_program(&program(c, &h1, "(kernel one)"))
        .await
        .unwrap();
    let ProgramInsert::New(p1) = p1 else {
        panic!("first insert is new: {p1:?}")
    };
    let mut child = program(c, &h2, "(kernel two)");
    child.parent_id = Some(p1);
    child.generation = 1;
    child.island = 1;
    child.mutator = "perturb";
    child.proposal = Some("widen the window");
    let p2 = db.insert_program(&child).await.unwrap().id();
    assert_eq!(
        db.insert_program(&program(c, &h1, "(kernel one)"))
            .await
            .unwrap(),
        ProgramInsert::Duplicate(p1)
    );
    // The same program in another campaign is another row.
    let p3 = db
        .insert_program(&program(other, &h1, "(kernel one)"))
        .await
        .unwrap();
    assert!(matches!(p3, ProgramInsert::New(id) if id != p1));
    let p4 = db
        .insert_program(&program(c, &h3, "(kernel three)"))
        .await
        .unwrap()
        .id();

    let stored = db.program(p2).await.unwrap();
    assert_eq!(stored.parent_id, Some(p1));
    assert_eq!((stored.island, stored.generation), (1, 1));
    assert_eq!(stored.mutator, "perturb");
    assert_eq!(stored.proposal.as_deref(), Some("widen the window"));
    assert_eq!(stored.canonical_text, "(kernel two)");

    assert_eq!(db.resolve_program(&p2.to_string()).await.unwrap().id, p2);
    assert_eq!(db.resolve_program("c").await.unwrap().id, p4);
    assert_eq!(
        db.resolve_program("AB2").await.unwrap().id,
        p2,
        "prefixes ignore case"
    );
    let ambiguous = db.resolve_program("ab").await.unwrap_err();
    assert!(
        matches!(ambiguous, Error::AmbiguousPrefix { .. }),
        "{ambiguous}"
    );
    assert!(
        ambiguous.to_string().contains(&format!("id {p2}")),
        "{ambiguous}"
    );
    // ab1... is in two campaigns: ambiguous too.
    assert!(matches!(
        db.resolve_program("ab1").await,
        Err(Error::AmbiguousPrefix { .. })
    ));
    assert!(matches!(
        db.resolve_program("ff").await,
        Err(Error::NoProgram(_))
    ));
    assert!(matches!(
        db.resolve_program("ab*").await,
        Err(Error::BadProgramRef(_))
    ));
    assert!(matches!(
        db.resolve_program("").await,
        Err(Error::BadProgramRef(_))
    ));

    let ids: Vec<i64> = db
        .campaign_programs(c)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![p1, p2, p4]);

    // A parent that does not exist is refused.
    let orphan_hash = hash("d");
    let mut orphan = program(c, &orphan_hash, "(kernel d)");
    orphan.parent_id = Some(12345);
    assert!(db.insert_program(&orphan).await.is_err());
}

#[tokio::test]
async fn evaluations_round_trip_and_are_committed_as_they_are_stored() {
    let dir = ScratchDir::new("db-evaluations");
    let db = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let h = hash("e");
    let p = db
        .insert_program(&program(c, &h, "(kernel e)"))
        .await
        .unwrap()
        .id();

    let first = evaluation(
        &h,
        0,
        Some(1.5),
        &[("kl_max_mean", 0.01), ("ppl_ratio_max", 1.02)],
    );
    let failed = evaluation(&h, 1, None, &[("kl_max_mean", 0.9)]);
    db.insert_evaluation(p, &first).await.unwrap();

    // Another connection sees the row at once: it was committed, not buffered.
    let reader = Db::open_existing(&dir.db()).await.unwrap();
    assert_eq!(reader.program_evaluations(p).await.unwrap().len(), 1);
    db.insert_evaluation(p, &failed).await.unwrap();

    let stored = reader.program_evaluations(p).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].evaluation, first);
    assert_eq!(stored[1].evaluation, failed);
    assert!(stored.iter().all(|s| s.program_id == p));
    assert_eq!(db.campaign_evaluations(c).await.unwrap().len(), 2);

    assert!(matches!(
        db.insert_evaluation(p, &first).await,
        Err(Error::DuplicateTrial { trial: 0, .. })
    ));
    let wrong = evaluation(&hash("f"), 2, Some(1.0), &[]);
    assert!(matches!(
        db.insert_evaluation(p, &wrong).await,
        Err(Error::HashMismatch { .. })
    ));
    let nan = evaluation(&h, 3, Some(1.0), &[("attention_speedup", f64::NAN)]);
    let error = db.insert_evaluation(p, &nan).await.unwrap_err();
    assert!(error.to_string().contains("attention_speedup"), "{error}");
    assert!(matches!(
        db.insert_evaluation(999, &evaluation(&h, 0, None, &[]))
            .await,
        Err(Error::NoProgram(_))
    ));
    assert_eq!(
        db.program_evaluations(p).await.unwrap().len(),
        2,
        "nothing half-stored"
    );
}

/// Three programs in a line of descent plus a crossover, with results.
async fn filled(db: &Db) -> (i64, [i64; 4]) {
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let hashes = [hash("1"), hash("2"), hash("3"), hash("4")];
    let mut ids = [0; 4];
    for (k, h) in hashes.iter().enumerate() {
        let mut p = program(c, h, "(kernel p)");
        p.generation = k as u32;
        p.parent_id = match k {
            0 => None,
            3 => Some(ids[1]),
            _ => Some(ids[k - 1]),
        };
        p.second_parent_id = (k == 3).then_some(ids[2]);
        p.mutator = if k == 3 { "crossover" } else { "perturb" };
        ids[k] = db.insert_program(&p).await.unwrap().id();
    }
    // 0: passed twice (mean score 2, mean speedup 1.5); 1: passed; 2: failed; 3: passed
    // once and failed its confirmation.
    let runs: [(usize, u32, Option<f64>, f64, f64); 6] = [
        (0, 0, Some(1.0), 1.0, 0.02),
        (0, 1, Some(3.0), 2.0, 0.04),
        (1, 0, Some(2.5), 3.0, 0.10),
        (2, 0, None, 9.0, 0.90),
        (3, 0, Some(9.0), 9.0, 0.01),
        (3, 1, None, 9.0, 0.50),
    ];
    for (k, trial, score, speedup, kl) in runs {
        let e = evaluation(
            &hashes[k],
            trial,
            score,
            &[
                ("attention_speedup", speedup),
                ("kl_max_mean", kl),
                ("ppl_ratio_max", 1.0 + kl),
            ],
        );
        db.insert_evaluation(ids[k], &e).await.unwrap();
    }
    (c, ids)
}

#[tokio::test]
async fn summaries_average_trials_and_count_only_programs_that_passed_every_one() {
    let dir = ScratchDir::new("db-summaries");
    let db = Db::open(&dir.db()).await.unwrap();
    let (c, ids) = filled(&db).await;
    let pending = db
        .insert_program(&program(c, &hash("5"), "(kernel q)"))
        .await
        .unwrap()
        .id();

    let list = db.program_summaries(Some(c), 10).await.unwrap();
    let listed: Vec<i64> = list.iter().map(|p| p.id).collect();
    assert_eq!(
        listed,
        vec![pending, ids[3], ids[2], ids[1], ids[0]],
        "newest first"
    );
    assert_eq!(db.program_summaries(None, 2).await.unwrap().len(), 2);

    let first = db.program_summary(ids[0]).await.unwrap();
    assert!(first.passed);
    assert_eq!(first.trials, 2);
    assert_eq!(first.score, Some(2.0));
    assert_eq!(first.attention_speedup, Some(1.5));
    assert_eq!(first.kl_max_mean, Some(0.03));
    let crossed = db.program_summary(ids[3]).await.unwrap();
    assert!(!crossed.passed, "a failed confirmation fails the program");
    assert_eq!(crossed.score, None);
    assert_eq!(crossed.stage_reached.as_deref(), Some("fidelity"));
    let waiting = db.program_summary(pending).await.unwrap();
    assert_eq!((waiting.trials, waiting.passed), (0, false));
    assert!(matches!(
        db.program_summary(999).await,
        Err(Error::NoProgram(_))
    ));
}

#[tokio::test]
async fn best_programs_sort_by_indexed_columns_and_by_any_recorded_metric() {
    let dir = ScratchDir::new("db-best");
    let db = Db::open(&dir.db()).await.unwrap();
    let (c, ids) = filled(&db).await;
    let best = |metric: &'static str, direction| {
        let db = db.clone();
        async move {
            db.best_programs(metric, direction, Some(c), 10)
                .await
                .unwrap()
                .iter()
                .map(|v| (v.program_id, v.value))
                .collect::<Vec<_>>()
        }
    };
    // Only programs 0 and 1 passed every trial.
    assert_eq!(
        best("score", Direction::Max).await,
        vec![(ids[1], 2.5), (ids[0], 2.0)]
    );
    assert_eq!(
        best("score", Direction::Min).await,
        vec![(ids[0], 2.0), (ids[1], 2.5)]
    );
    assert_eq!(
        best("kl_max_mean", Direction::Min).await,
        vec![(ids[0], 0.03), (ids[1], 0.10)]
    );
    // Not an indexed column: read from the metrics JSON.
    let ppl = best("ppl_ratio_max", Direction::Min).await;
    assert_eq!(
        ppl.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![ids[0], ids[1]]
    );
    assert!((ppl[0].1 - 1.03).abs() < 1e-12);
    assert!(best("never_recorded", Direction::Max).await.is_empty());
    assert_eq!(
        db.best_programs("score", Direction::Max, Some(c), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        db.best_programs("x'); DROP TABLE programs; --", Direction::Max, None, 1)
            .await,
        Err(Error::BadMetric(_))
    ));

    let pairs = db
        .metric_pairs("attention_speedup", "ppl_ratio_max", None)
        .await
        .unwrap();
    let pairs: Vec<(i64, f64, Option<f64>)> = pairs
        .iter()
        .map(|v| (v.program_id, v.value, v.other))
        .collect();
    assert_eq!(pairs.len(), 2);
    assert_eq!((pairs[0].0, pairs[0].1), (ids[0], 1.5));
    assert_eq!((pairs[1].0, pairs[1].1), (ids[1], 3.0));
    assert!((pairs[1].2.unwrap() - 1.1).abs() < 1e-12);
}

#[tokio::test]
async fn lineage_climbs_both_parents_and_progress_counts_the_campaign() {
    let dir = ScratchDir::new("db-lineage");
    let db = Db::open(&dir.db()).await.unwrap();
    let (c, ids) = filled(&db).await;
    let nodes = db.lineage(ids[3]).await.unwrap();
    let found: Vec<i64> = nodes.iter().map(|n| n.id).collect();
    assert_eq!(found, vec![ids[0], ids[1], ids[2], ids[3]]);
    let crossed = nodes.iter().find(|n| n.id == ids[3]).unwrap();
    assert_eq!(
        (crossed.parent_id, crossed.second_parent_id),
        (Some(ids[1]), Some(ids[2]))
    );
    assert_eq!(crossed.mutator, "crossover");
    assert_eq!(nodes[0].score, Some(2.0));
    assert_eq!(db.lineage(ids[0]).await.unwrap().len(), 1);
    assert!(matches!(db.lineage(999).await, Err(Error::NoProgram(_))));

    let progress = db.campaign_progress(c).await.unwrap();
    assert_eq!(progress.programs, 4);
    assert_eq!(progress.evaluations, 6);
    assert_eq!(progress.passed, 4);
    assert_eq!(progress.best_score, Some(2.5));
    assert_eq!(progress.best_program_id, Some(ids[1]));
    assert_eq!(progress.llm_tokens, 0);
}

#[tokio::test]
async fn llm_calls_are_recorded_in_order_with_their_tokens() {
    let dir = ScratchDir::new("db-llm");
    let db = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let p = db
        .insert_program(&program(c, &hash("9"), "(kernel n)"))
        .await
        .unwrap()
        .id();
    let call = |stage, response: Option<&'static str>, error: Option<&'static str>| NewLlmCall {
        campaign_id: c,
        program_id: None,
        stage,
        model: "qwen-coder",
        params_json: r#"{"temperature":0.7,"seed":3}"#,
        prompt: "improve this kernel",
        response,
        prompt_tokens: 100,
        completion_tokens: 20,
        latency_seconds: 1.25,
        error,
    };
    let research = db
        .insert_llm_call(&call("research", Some("try a window"), None))
        .await
        .unwrap();
    let code = db
        .insert_llm_call(&call("code", None, Some("timed out after 60 s")))
        .await
        .unwrap();
    db.set_llm_call_program(research, p).await.unwrap();

    let calls = db.campaign_llm_calls(c).await.unwrap();
    assert_eq!(
        calls.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![research, code]
    );
    assert_eq!(calls[0].program_id, Some(p));
    assert_eq!(calls[0].response.as_deref(), Some("try a window"));
    assert_eq!(calls[0].params_json, r#"{"temperature":0.7,"seed":3}"#);
    assert_eq!(calls[1].response, None);
    assert_eq!(calls[1].error.as_deref(), Some("timed out after 60 s"));
    assert_eq!(
        (calls[1].prompt_tokens, calls[1].completion_tokens),
        (100, 20)
    );
    assert_eq!(calls[1].latency_seconds, 1.25);
    assert_eq!(db.campaign_llm_tokens(c).await.unwrap(), 240);
    assert_eq!(db.campaign_progress(c).await.unwrap().llm_tokens, 240);
}

#[tokio::test]
async fn archive_cells_insights_and_mutator_statistics_persist() {
    let dir = ScratchDir::new("db-search-state");
    let db = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let a = db
        .insert_program(&program(c, &hash("a"), "(kernel a)"))
        .await
        .unwrap()
        .id();
    let b = db
        .insert_program(&program(c, &hash("b"), "(kernel b)"))
        .await
        .unwrap()
        .id();

    db.set_archive_cell(c, 0, "2,3", a).await.unwrap();
    db.set_archive_cell(c, 1, "2,3", a).await.unwrap();
    db.set_archive_cell(c, 0, "2,3", b).await.unwrap();
    let cells = db.archive_cells(c).await.unwrap();
    let cells: Vec<(i64, &str, i64)> = cells
        .iter()
        .map(|x| (x.island, x.cell_key.as_str(), x.program_id))
        .collect();
    assert_eq!(cells, vec![(0, "2,3", b), (1, "2,3", a)]);
    assert!(
        db.set_archive_cell(c, 0, "0,0", 999).await.is_err(),
        "foreign key"
    );

    let i = db
        .insert_insight(c, "sinks keep KL low", Some(a))
        .await
        .unwrap();
    db.insert_insight(c, "tiles of 64 are slower", None)
        .await
        .unwrap();
    let insights = db.insights(c).await.unwrap();
    assert_eq!(insights.len(), 2);
    assert_eq!(
        (insights[0].id, insights[0].source_program_id),
        (i, Some(a))
    );
    assert_eq!(insights[1].text, "tiles of 64 are slower");

    db.record_mutator_outcome(c, &outcome("perturb", true, 0.5))
        .await
        .unwrap();
    db.record_mutator_outcome(c, &outcome("perturb", false, 0.0))
        .await
        .unwrap();
    db.record_mutator_outcome(c, &outcome("local_llm", true, 1.25))
        .await
        .unwrap();
    let stats = db.mutator_stats(c).await.unwrap();
    let stats: Vec<(&str, i64, i64, f64)> = stats
        .iter()
        .map(|s| (s.mutator.as_str(), s.uses, s.improvements, s.reward_sum))
        .collect();
    assert_eq!(
        stats,
        vec![("local_llm", 1, 1, 1.25), ("perturb", 2, 1, 0.5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_handles_all_commit() {
    let dir = ScratchDir::new("db-concurrent");
    let db = Db::open(&dir.db()).await.unwrap();
    let other = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..24 {
        let handle = if k % 2 == 0 {
            db.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let h = hash(&format!("{k:02x}"));
            let text = format!("(kernel k{k})");
            let id = handle.insert_program(&program(c, &h, &text)).await?.id();
            // The evaluation and the bandit's statistics commit together.
            let e = evaluation(&h, 0, Some(k as f64), &[("attention_speedup", 1.0)]);
            handle
                .store_evaluation(id, &e, Some(&outcome("perturb", k % 3 == 0, 1.0)))
                .await
                .map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(db.campaign_evaluations(c).await.unwrap().len(), 24);
    let stats = other.mutator_stats(c).await.unwrap();
    assert_eq!((stats[0].uses, stats[0].improvements), (24, 8));
}

#[tokio::test]
async fn every_indexed_metric_lands_in_its_column() {
    let dir = ScratchDir::new("db-indexed");
    let db = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    // Program k has value k + 1 of every metric; a column left empty would drop it from
    // `best_programs`, and a swapped one would give another program's value.
    let metrics: Vec<&str> = agent::db::INDEXED_METRICS.iter().map(|m| m.name).collect();
    for k in 0..3 {
        let h = hash(&k.to_string());
        let id = db
            .insert_program(&program(c, &h, "(kernel k)"))
            .await
            .unwrap()
            .id();
        let value = f64::from(k + 1);
        let named: Vec<(&str, f64)> = metrics.iter().map(|&m| (m, value)).collect();
        db.insert_evaluation(id, &evaluation(&h, 0, Some(value), &named))
            .await
            .unwrap();
    }
    for m in agent::db::INDEXED_METRICS {
        let best = db
            .best_programs(m.name, Direction::Max, Some(c), 3)
            .await
            .unwrap();
        let values: Vec<f64> = best.iter().map(|b| b.value).collect();
        assert_eq!(values, vec![3.0, 2.0, 1.0], "{}", m.name);
    }
}

/// Set in the child process of the kill test: the database it writes to.
const WRITER_ENV: &str = "EVOKERNEL_TEST_WRITER_DB";

/// The writer half of the kill test: does nothing unless started by it. Stores programs
/// and evaluations until killed, printing each evaluation's id once `insert_evaluation` returns.
#[tokio::test]
async fn writer_child() {
    use std::io::Write;
    let Some(path) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let db = Db::open(std::path::Path::new(&path)).await.unwrap();
    let c = db.create_campaign(&campaign("killed")).await.unwrap();
    // Bounded, so that a child whose parent died does not write forever.
    for k in 0u64..10_000 {
        let h = hash(&format!("{k:016x}"));
        let id = db
            .insert_program(&program(c, &h, "(kernel k)"))
            .await
            .unwrap()
            .id();
        let e = db
            .insert_evaluation(
                id,
                &evaluation(&h, 0, Some(1.0), &[("attention_speedup", 1.0)]),
            )
            .await
            .unwrap();
        println!("committed {e}");
        std::io::stdout().flush().unwrap();
    }
}

#[test]
fn kill_9_loses_nothing_that_was_committed() {
    use std::io::{BufRead, BufReader};
    let dir = ScratchDir::new("db-kill");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(WRITER_ENV, dir.db())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut committed = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(id) = line.unwrap().strip_prefix("committed ") {
            committed.push(id.parse::<i64>().unwrap());
        }
        if committed.len() == 40 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(committed.len(), 40, "the writer stopped early");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = Db::open_existing(&dir.db()).await.unwrap();
        let c = db.campaign_by_name("killed").await.unwrap().id;
        let stored: Vec<i64> = db
            .campaign_evaluations(c)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        for id in &committed {
            assert!(stored.contains(id), "committed evaluation {id} was lost");
        }
        // At most the one in flight beyond what was reported, and every program whole.
        assert!(
            stored.len() <= committed.len() + 1,
            "{} stored",
            stored.len()
        );
        let programs = db.campaign_programs(c).await.unwrap();
        assert!(programs.len() <= stored.len() + 1);
        db.close().await.unwrap();
        let mut raw = raw_connection(&dir.db()).await;
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut raw)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        raw.close().await.unwrap();
    });
}

#[tokio::test]
async fn summaries_show_the_measured_speedup_and_whether_it_is_slower_than_exact() {
    let dir = ScratchDir::new("db-drop-in-summary");
    let db = Db::open(&dir.db()).await.unwrap();
    let c = db.create_campaign(&campaign("c")).await.unwrap();
    let h = hash("d1");
    let id = db
        .insert_program(&program(c, &h, "(kernel d)"))
        .await
        .unwrap()
        .id();
    // The drop-in task's fidelity and measured speed-up; an interval below 1 marks the
    // program slower than exact attention.
    let e = evaluation(
        &h,
        0,
        Some(2.0),
        &[
            ("kl_max_mean", 0.07),
            ("attention_speedup", 0.8),
            ("attention_speedup_hi", 0.9),
        ],
    );
    db.insert_evaluation(id, &e).await.unwrap();
    let summary = db.program_summary(id).await.unwrap();
    assert_eq!(summary.kl_max_mean, Some(0.07));
    assert_eq!(summary.attention_speedup, Some(0.8));
    assert!(summary.slower_than_exact());
}
