//! The real server on 127.0.0.1:0, spoken to over HTTP: every route, and every kind of bad
//! input answered with a 4xx JSON error naming the field while the server keeps serving.

use recsys::data::{Dataset, Item, ItemMeta};
use recsys::fused::{Alpha, TagMatcher};
use recsys::model::{Checkpoint, KernelSource, SasRec, SasRecConfig, EXACT};
use recsys::serve::{
    app, app_with_context, app_with_explanations, run, Explanations, ServeConfig, TagFusion,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MAX_BODY: usize = 2048;

/// A small untrained model over 20 films and 3 users; the routes do not care about quality.
fn checkpoint() -> Checkpoint {
    let n_items = 20;
    let dataset = Dataset {
        name: "films".into(),
        items: (0..n_items)
            .map(|i| Item {
                raw_id: (100 + i).to_string(),
                meta: ItemMeta {
                    title: format!("Film {i}"),
                    year: Some(1990 + i as i32),
                    genres: vec!["Drama".into()],
                },
            })
            .collect(),
        users: vec!["alice".into(), "bob".into(), "7".into()],
        histories: vec![vec![0, 1, 2, 3], vec![4, 5], vec![6]],
    };
    let config = SasRecConfig {
        n_items,
        max_len: 8,
        d_model: 16,
        n_blocks: 1,
        n_heads: 2,
        d_ff: 32,
        dropout: 0.0,
    };
    Checkpoint {
        model: SasRec::new(config, EXACT, 9).unwrap(),
        dataset,
        report: None,
        kernel_source: None,
    }
}

/// Starts the server and returns its base URL.
async fn start() -> String {
    start_with(checkpoint()).await
}

/// Starts the server on `checkpoint` and returns its base URL.
async fn start_with(checkpoint: Checkpoint) -> String {
    let config = ServeConfig {
        max_body_bytes: MAX_BODY,
        max_k: 100,
    };
    let router = app(checkpoint, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, router));
    format!("http://{addr}")
}

async fn post(base: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/recommend"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn get(base: &str, path: &str) -> (StatusCode, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Asserts a JSON error with `status` naming `field`, then that the server still answers.
async fn assert_error(base: &str, got: (StatusCode, Value), status: StatusCode, field: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["field"], field, "{}", got.1);
    assert!(got.1["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(get(base, "/healthz").await.0, StatusCode::OK);
}

fn item_ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn recommends_for_a_user_without_their_seen_items() {
    let base = start().await;
    let (status, body) = post(&base, json!({"user_id": "alice", "k": 5}).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = item_ids(&body);
    assert_eq!(ids.len(), 5);
    assert!(ids
        .iter()
        .all(|id| !["100", "101", "102", "103"].contains(&id.as_str())));
    let scores: Vec<f64> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    assert!(body["model"].as_str().unwrap().starts_with("sasrec@"));
    assert!(body["items"][0]["title"]
        .as_str()
        .unwrap()
        .starts_with("Film "));
    // A numeric user id is the same as its string.
    let (status, _) = post(&base, json!({"user_id": 7}).to_string()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn recommends_for_a_history_and_keeps_seen_items_when_asked() {
    let base = start().await;
    let request = json!({"history": ["105", 106], "k": 20, "exclude_seen": false, "explain": true});
    let (status, body) = post(&base, request.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = item_ids(&body);
    assert_eq!(ids.len(), 20, "every item, seen ones included");
    assert!(
        body["items"][0].get("reason").is_none(),
        "an ad-hoc history has no cached explanations"
    );
    let (_, filtered) = post(&base, json!({"history": ["105", 106], "k": 20}).to_string()).await;
    assert_eq!(item_ids(&filtered).len(), 18);
}

#[tokio::test]
async fn similar_items_exclude_the_item_itself() {
    let base = start().await;
    let (status, text) = get(&base, "/v1/items/104/similar?k=3").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let ids = item_ids(&body);
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&"104".to_string()));
}

#[tokio::test]
async fn unknown_user_is_a_404_naming_user_id() {
    let base = start().await;
    let got = post(&base, json!({"user_id": "mallory"}).to_string()).await;
    assert_error(&base, got, StatusCode::NOT_FOUND, "user_id").await;
}

#[tokio::test]
async fn unknown_item_is_a_404_naming_its_place() {
    let base = start().await;
    let got = post(&base, json!({"history": ["100", "999"]}).to_string()).await;
    assert_error(&base, got, StatusCode::NOT_FOUND, "history[1]").await;
    let (status, text) = get(&base, "/v1/items/999/similar").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["field"],
        "id"
    );
}

#[tokio::test]
async fn k_out_of_range_is_a_422_naming_k() {
    let base = start().await;
    for k in [json!(0), json!(101), json!(-1), json!("ten")] {
        let got = post(&base, json!({"user_id": "bob", "k": k}).to_string()).await;
        assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, "k").await;
    }
    let (status, _) = get(&base, "/v1/items/100/similar?k=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn empty_history_is_a_422_naming_history() {
    let base = start().await;
    let got = post(&base, json!({"history": []}).to_string()).await;
    assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, "history").await;
    let got = post(&base, json!({"k": 3}).to_string()).await;
    assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, "user_id").await;
    let got = post(
        &base,
        json!({"user_id": "bob", "histroy": ["100"]}).to_string(),
    )
    .await;
    assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, "histroy").await;
}

/// Found by `scripts/fuzz` (target `recommend_request`): an unknown key that is the empty
/// string was refused with an empty `field` and a message that did not say which key it was.
#[tokio::test]
async fn an_empty_unknown_key_is_named_in_the_message() {
    let base = start().await;
    let crash: &[u8] = br#"{"277resu_id": null, "k0story": [1], "": 19}"#;
    let got = post(&base, crash.to_vec()).await;
    let message = got.1["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with(r#"unknown field ""; the fields are"#),
        "{message}"
    );
    assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, "").await;
    let got = post(
        &base,
        json!({"user_id": "bob", "histroy": ["100"]}).to_string(),
    )
    .await;
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(r#"unknown field "histroy""#),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_body() {
    let base = start().await;
    let got = post(&base, "{\"user_id\": \"bob\"").await;
    assert_error(&base, got, StatusCode::BAD_REQUEST, "body").await;
}

#[tokio::test]
async fn an_oversized_body_is_a_413_naming_the_body() {
    let base = start().await;
    let history: Vec<String> = (0..MAX_BODY).map(|_| "100".to_string()).collect();
    let got = post(&base, json!({"history": history}).to_string()).await;
    assert_error(&base, got, StatusCode::PAYLOAD_TOO_LARGE, "body").await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let base = start().await;
    post(&base, json!({"user_id": "bob"}).to_string()).await;
    post(&base, json!({"user_id": "nobody"}).to_string()).await;
    let (status, text) = get(&base, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("recsys_requests_total{route=\"/v1/recommend\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("recsys_requests_total{route=\"/v1/recommend\",status=\"404\"} 1"));
    assert!(text.contains("recsys_request_duration_seconds_count{route=\"/v1/recommend\"} 2"));
    assert!(text.contains("le=\"+Inf\""));
}

#[tokio::test]
async fn every_answer_and_the_metrics_name_the_kernel_by_hash() {
    let mut checkpoint = checkpoint();
    // A campaign's window kernel, with a quote in the campaign name the metrics must escape.
    checkpoint
        .model
        .set_kernel("(kernel w3 (param W int 3 (1 16)) (mask (and causal (> kv (- q W)))))")
        .unwrap();
    checkpoint.kernel_source = Some(KernelSource {
        program_id: 42,
        campaign: "say \"hi\"".into(),
    });
    let hash = checkpoint.model.kernel.hash.clone();
    assert_eq!(hash.len(), 64);
    let base = start_with(checkpoint).await;
    let expected = json!({"name": "w3", "hash": hash, "program_id": 42, "campaign": "say \"hi\""});

    let (status, body) = post(&base, json!({"user_id": "alice"}).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kernel"], expected);
    assert_eq!(body["model"], format!("sasrec@{}", &hash[..12]));
    let (status, text) = get(&base, "/v1/items/100/similar?k=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["kernel"],
        expected
    );
    let (_, text) = get(&base, "/healthz").await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["kernel"],
        expected
    );

    let (status, text) = get(&base, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let gauge = format!(
        "recsys_kernel_info{{name=\"w3\",hash=\"{hash}\",program_id=\"42\",campaign=\"say \\\"hi\\\"\"}} 1"
    );
    assert!(text.lines().any(|l| l == gauge), "no `{gauge}` in\n{text}");
    assert!(text.contains("# TYPE recsys_kernel_info gauge"));

    // A kernel from no campaign has no program labels.
    let base = start().await;
    let (_, text) = get(&base, "/metrics").await;
    let line = text
        .lines()
        .find(|l| l.starts_with("recsys_kernel_info{"))
        .unwrap();
    assert!(
        line.starts_with("recsys_kernel_info{name=\"exact\",hash=\""),
        "{line}"
    );
    assert!(!line.contains("program_id"), "{line}");
    let (_, body) = post(&base, json!({"user_id": "bob"}).to_string()).await;
    assert_eq!(body["kernel"]["name"], "exact");
    assert!(body["kernel"].get("campaign").is_none(), "{body}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let base = start().await;
    let (status, text) = get(&base, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Recommendations"]["properties"]["kernel"]["$ref"],
        "#/components/schemas/Kernel"
    );
    assert_eq!(schemas["Kernel"]["required"], json!(["name", "hash"]));
    for route in [
        "/v1/recommend",
        "/v1/items/{id}/similar",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(route).is_some(), "{route} is missing");
    }
    // Every route the document lists answers (not the fallback's 404).
    for path in [
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/v1/items/100/similar",
    ] {
        assert_eq!(get(&base, path).await.0, StatusCode::OK, "{path}");
    }
    let (status, text) = get(&base, "/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("\"field\":\"path\""));
}

/// The ids and scores a recommend answer lists.
fn ranked(answer: &Value) -> Vec<(String, f64)> {
    answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["item_id"].as_str().unwrap().to_string(),
                item["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_scored_together_get_the_answers_they_get_alone() {
    let base = start().await;
    let bodies: Vec<Value> = (0..24)
        .map(|i| {
            let history: Vec<String> = (0..=(i % 7))
                .map(|j| (100 + (i + j) % 20).to_string())
                .collect();
            json!({"history": history, "k": 5, "exclude_seen": i % 2 == 0})
        })
        .collect();
    let mut alone = Vec::new();
    for body in &bodies {
        let (status, answer) = post(&base, body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        alone.push(ranked(&answer));
    }
    let together = send_all_at_once(&base, &bodies).await;
    for (one, many) in alone.iter().zip(&together) {
        assert_eq!(one.len(), many.len());
        for ((id_a, score_a), (id_b, score_b)) in one.iter().zip(many) {
            assert_eq!(id_a, id_b);
            assert!((score_a - score_b).abs() < 1e-4, "{score_a} vs {score_b}");
        }
    }
}

/// Sends every body at once and returns the answers in order.
async fn send_all_at_once(base: &str, bodies: &[Value]) -> Vec<Vec<(String, f64)>> {
    let tasks: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (base, body) = (base.to_string(), body.to_string());
            tokio::spawn(async move { post(&base, body).await })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        let (status, answer) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        out.push(ranked(&answer));
    }
    out
}

#[tokio::test]
async fn explain_returns_the_cached_sentence_for_the_user_and_item() {
    // Every item gets a sentence for alice, none for bob: only cached pairs have reasons.
    let mut explanations = Explanations::default();
    for i in 0..20 {
        let item = (100 + i).to_string();
        explanations.insert("alice", &item, &format!("Alice may like film {i}."));
    }
    let router = app_with_explanations(checkpoint(), ServeConfig::default(), explanations).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(run(listener, router));

    let (status, body) = post(
        &base,
        json!({"user_id": "alice", "k": 3, "explain": true}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for item in body["items"].as_array().unwrap() {
        let id: usize = item["item_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            item["reason"],
            format!("Alice may like film {}.", id - 100),
            "{body}"
        );
    }
    let (_, quiet) = post(&base, json!({"user_id": "alice", "k": 3}).to_string()).await;
    assert!(
        quiet["items"][0].get("reason").is_none(),
        "only when asked: {quiet}"
    );
    let (_, bob) = post(
        &base,
        json!({"user_id": "bob", "k": 3, "explain": true}).to_string(),
    )
    .await;
    assert!(
        bob["items"][0].get("reason").is_none(),
        "nothing cached for bob: {bob}"
    );
}

/// Starts a server that fuses the model with tags at `alpha`: alice likes space operas;
/// film 107 is one, film 112 half of one (a space western), bob has no profile.
async fn start_fused(alpha: f32) -> String {
    let mut item_tags = vec![Vec::<String>::new(); 20];
    item_tags[7] = vec!["space opera".into()];
    item_tags[12] = vec!["space western".into()];
    let fusion = TagFusion {
        alpha: Alpha::new(alpha).unwrap(),
        items: TagMatcher::new(&item_tags),
        users: [("alice".to_string(), vec!["space operas".to_string()])].into(),
    };
    let router = app_with_context(
        checkpoint(),
        ServeConfig::default(),
        Explanations::default(),
        Some(fusion),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, router));
    format!("http://{addr}")
}

#[tokio::test]
async fn fused_serving_ranks_a_tagged_user_by_model_and_tags() {
    let plain = start().await;
    let ask = |user: &str| json!({"user_id": user, "k": 10}).to_string();
    let (_, plain_alice) = post(&plain, ask("alice")).await;
    let (_, plain_bob) = post(&plain, ask("bob")).await;

    // Tags alone: the full match, then the half match.
    let tags_only = start_fused(0.0).await;
    let (status, body) = post(&tags_only, ask("alice")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(item_ids(&body)[..2], ["107", "112"]);
    assert!(body["model"].as_str().unwrap().ends_with("+tags(alpha=0)"));
    // A user without tags, and an ad-hoc history, get the model alone.
    let (_, bob) = post(&tags_only, ask("bob")).await;
    assert_eq!(item_ids(&bob), item_ids(&plain_bob));
    assert!(!bob["model"].as_str().unwrap().contains("+tags"));
    let history = json!({"history": ["100", "101"], "k": 5}).to_string();
    let (_, fused_history) = post(&tags_only, history.clone()).await;
    let (_, plain_history) = post(&plain, history).await;
    assert_eq!(item_ids(&fused_history), item_ids(&plain_history));

    // α = 1 is the model's ranking exactly.
    let model_only = start_fused(1.0).await;
    let (_, body) = post(&model_only, ask("alice")).await;
    assert_eq!(ranked(&body), ranked(&plain_alice));
}
