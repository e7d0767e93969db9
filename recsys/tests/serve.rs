//! The real server on 127.0.0.1:0, spoken to over HTTP: every route, and every kind of bad
//! input answered with a JSON error naming the field (from the handlers, the router's
//! fallbacks and the connection layer alike) and counted in `/metrics`, while the server
//! keeps serving.

use std::time::Duration;

mod common;

use common::checkpoint;
use recsys::fused::{Alpha, TagMatcher};
use recsys::model::{Checkpoint, KernelSource};
use recsys::serve::{
    app, app_with_context, app_with_explanations, run, Explanations, ServeConfig, TagFusion,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_BODY: usize = 2048;

/// Starts the server and returns its base URL.
async fn start() -> String {
    start_with(checkpoint()).await
}

fn config() -> ServeConfig {
    ServeConfig {
        max_body_bytes: MAX_BODY,
        ..Default::default()
    }
}

/// Starts the server on `checkpoint` and returns its base URL.
async fn start_with(checkpoint: Checkpoint) -> String {
    start_configured(checkpoint, config()).await
}

/// Starts the server on `checkpoint` with `config` and returns its base URL.
async fn start_configured(checkpoint: Checkpoint, config: ServeConfig) -> String {
    let app = app(checkpoint, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, app));
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
    assert!(
        body["explanations_unavailable"]
            .as_str()
            .is_some_and(|why| why.contains("ad-hoc history")),
        "{body}"
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
    // Schemathesis: the document once let both through; the server refuses them.
    let got = post(
        &base,
        json!({"user_id": 9223372036854775806_i64, "history": [""], "k": 10}).to_string(),
    )
    .await;
    assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, "history").await;
    // A field is given or left out: null is refused, naming it.
    for field in ["user_id", "history", "k", "exclude_seen", "explain"] {
        let mut body = json!({"user_id": "bob"});
        body[field] = Value::Null;
        let got = post(&base, body.to_string()).await;
        assert_error(&base, got, StatusCode::UNPROCESSABLE_ENTITY, field).await;
    }
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
        "#/components/schemas/KernelInfo"
    );
    assert_eq!(schemas["KernelInfo"]["required"], json!(["name", "hash"]));
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
    let app = app_with_explanations(checkpoint(), ServeConfig::default(), explanations).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(run(listener, app));

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
    assert!(quiet.get("explanations_unavailable").is_none(), "{quiet}");
    assert!(
        body.get("explanations_unavailable").is_none(),
        "every item explained: {body}"
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
    assert!(
        bob["explanations_unavailable"]
            .as_str()
            .is_some_and(|why| why.contains("user `bob`") && why.contains("3 of these 3")),
        "{bob}"
    );
}

#[tokio::test]
async fn explain_without_explanations_says_they_are_unavailable_and_why() {
    let base = start().await;
    let (status, body) = post(
        &base,
        json!({"user_id": "alice", "k": 3, "explain": true}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["items"][0].get("reason").is_none(), "{body}");
    assert_eq!(
        body["explanations_unavailable"],
        "the server was started without RecGPT explanations"
    );

    let app = app_with_explanations(
        checkpoint(),
        config(),
        Explanations::none("the server found no database at x.db"),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(run(listener, app));
    let (_, body) = post(
        &base,
        json!({"user_id": "alice", "explain": true}).to_string(),
    )
    .await;
    assert_eq!(
        body["explanations_unavailable"],
        "the server found no database at x.db"
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
    let app = app_with_context(
        checkpoint(),
        ServeConfig::default(),
        Explanations::default(),
        Some(fusion),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, app));
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

/// An answer read off a raw socket.
struct RawAnswer {
    status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as the API's error shape: asserts JSON with a field and a message.
    fn error_field(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "status {}",
            self.status
        );
        let body: Value = serde_json::from_slice(&self.body).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body["error"]["field"].as_str().unwrap().to_string()
    }
}

/// The first whole answer in `bytes` (head and a body of its content-length), if there is one.
fn parse_answer(bytes: &[u8]) -> Option<RawAnswer> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.get(9..12)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let body = bytes.get(head_end + 4..head_end + 4 + length)?.to_vec();
    Some(RawAnswer {
        status,
        headers,
        body,
    })
}

/// Reads one answer from `stream`; `None` if the server closes without one.
async fn read_answer(stream: &mut TcpStream) -> Option<RawAnswer> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(answer) = parse_answer(&bytes) {
            return Some(answer);
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the server answers or closes within 5 s");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Sends `request` as it is on a new connection and reads the answer.
async fn raw(base: &str, request: &[u8]) -> RawAnswer {
    let mut stream = connect(base).await;
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream).await.expect("an answer")
}

/// Whether the server closes `stream` within `within` (reading nothing else).
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn counted(metrics: &str, route: &str, status: u16) -> bool {
    let line = format!("recsys_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics.lines().any(|l| l.starts_with(&line))
}

#[tokio::test]
async fn every_error_is_json_with_its_status_and_counted_in_the_metrics() {
    let base = start().await;
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(ServeConfig::default().max_header_bytes + 1024)
    );
    let big_body = "x".repeat(MAX_BODY + 1);
    let cases: Vec<(String, u16, &str, &str)> = vec![
        // The router's fallbacks.
        ("GET /nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 404, "path", "other"),
        ("DELETE /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 405, "method", "/healthz"),
        ("GET /v1/recommend HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 405, "method", "/v1/recommend"),
        // The extractors' refusals: a path part that is not UTF-8, a query that is not a number.
        ("GET /v1/items/%FF/similar HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 400, "id", "/v1/items/{id}/similar"),
        ("GET /v1/items/100/similar?k=%FF HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), 422, "k", "/v1/items/{id}/similar"),
        (
            format!(
                "POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big_body}",
                big_body.len()
            ),
            413,
            "body",
            "/v1/recommend",
        ),
        // hyper's own answers, rewritten: a head over the size limit, a malformed head.
        (huge_header, 431, "headers", "other"),
        ("GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n".into(), 400, "request", "other"),
        ("GET /\u{1}nothing HTTP/1.1\r\nhost: x\r\n\r\n".into(), 400, "request", "other"),
    ];
    for (request, status, field, _) in &cases {
        let answer = raw(&base, request.as_bytes()).await;
        assert_eq!(answer.status, *status, "{request:.80}");
        assert_eq!(answer.error_field(), *field, "{request:.80}");
    }
    let allow = raw(&base, cases[1].0.as_bytes()).await;
    assert_eq!(allow.header("allow"), Some("GET,HEAD"));

    let (_, metrics) = get(&base, "/metrics").await;
    for (_, status, _, route) in &cases {
        assert!(
            counted(&metrics, route, *status),
            "{route} {status}:\n{metrics}"
        );
    }
    assert_eq!(get(&base, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_and_then_its_answer() {
    let base = start().await;
    let body = json!({"user_id": "bob", "k": 2}).to_string();
    let mut stream = connect(&base).await;
    stream
        .write_all(
            format!(
                "POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await.unwrap();
    assert_eq!(answer.status, 200);
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(!counted(&metrics, "other", 100), "{metrics}");
}

#[tokio::test]
async fn a_slow_head_gets_a_408_and_silent_or_idle_connections_close() {
    let config = ServeConfig {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..config()
    };
    let base = start_configured(checkpoint(), config).await;

    let mut half_sent = connect(&base).await;
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow")
        .await
        .unwrap();
    let mut silent = connect(&base).await;
    let mut kept_alive = connect(&base).await;
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut kept_alive).await.unwrap().status, 200);

    let answer = read_answer(&mut half_sent).await.expect("a 408");
    assert_eq!(answer.status, 408);
    assert_eq!(answer.error_field(), "headers");
    assert!(closes_within(&mut half_sent, Duration::from_secs(2)).await);
    assert!(closes_within(&mut silent, Duration::from_secs(2)).await);
    assert!(closes_within(&mut kept_alive, Duration::from_secs(2)).await);

    let (_, metrics) = get(&base, "/metrics").await;
    assert!(counted(&metrics, "other", 408), "{metrics}");
    assert!(
        metrics.contains("recsys_connections_closed_total{reason=\"header_timeout\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recsys_connections_closed_total{reason=\"idle_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_slow_body_gets_a_408_naming_the_body() {
    let config = ServeConfig {
        body_read_timeout: Duration::from_millis(300),
        ..config()
    };
    let base = start_configured(checkpoint(), config).await;
    let mut stream = connect(&base).await;
    stream
        .write_all(b"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"user_id\"")
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await.expect("a 408");
    assert_eq!(answer.status, 408);
    assert_eq!(answer.error_field(), "body");
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(counted(&metrics, "/v1/recommend", 408), "{metrics}");
}

#[tokio::test]
async fn at_the_connection_cap_the_oldest_waiting_connection_makes_room() {
    let config = ServeConfig {
        max_connections: 4,
        ..config()
    };
    let base = start_configured(checkpoint(), config).await;
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(connect(&base).await);
        // Accepted in this order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waiting[1]
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Two newcomers, who keep their connections: each finds the door open.
    let mut newcomers = Vec::new();
    for _ in 0..2 {
        let client = reqwest::Client::new();
        let response = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        newcomers.push(client);
    }
    assert!(closes_within(&mut waiting[0], Duration::from_secs(2)).await);
    assert!(closes_within(&mut waiting[1], Duration::from_secs(2)).await);
    assert!(!closes_within(&mut waiting[3], Duration::from_millis(200)).await);
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("recsys_connections_closed_total{reason=\"shed\"} ")),
        "{metrics}"
    );
}
