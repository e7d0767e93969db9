//! The OpenAI-compatible client against a fake endpoint on loopback: what it sends, what
//! it retries, what it gives up on, and the errors it gives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::llm::remote::{RemoteConfig, RemoteLlm};
use agent::llm::Request;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// How the fake endpoint answers the n-th request (0-based).
type Script = fn(usize, &HeaderMap, &Value) -> (StatusCode, String);

#[derive(Clone)]
struct Fake {
    script: Script,
    calls: Arc<AtomicUsize>,
}

async fn chat(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, String) {
    let n = fake.calls.fetch_add(1, Ordering::SeqCst);
    (fake.script)(n, &headers, &body)
}

/// Serves `script` on 127.0.0.1 and returns the base URL and the call counter.
async fn serve(script: Script) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(Fake {
            script,
            calls: calls.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), calls)
}

fn config(base_url: String) -> RemoteConfig {
    RemoteConfig {
        base_url,
        model: "fake-coder".into(),
        api_key_env: None,
        timeout_s: 2.0,
        retries: 2,
        backoff_s: 0.01,
    }
}

fn request() -> Request {
    Request {
        system: "You write AKL.".into(),
        user: "Improve this kernel.".into(),
        max_tokens: 64,
        temperature: 0.7,
        seed: 9,
    }
}

/// The error of a call that must fail, as one line.
async fn failure(config: RemoteConfig) -> String {
    let err = RemoteLlm::new(config)
        .unwrap()
        .complete(&request())
        .await
        .unwrap_err();
    format!("{err:#}")
}

fn completion(text: &str) -> String {
    json!({
        "model": "fake-coder-v2",
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7},
    })
    .to_string()
}

#[tokio::test]
async fn sends_the_chat_and_reads_the_answer() {
    let (url, calls) = serve(|_, headers, body| {
        let ok = body["model"] == "fake-coder"
            && body["messages"][0]["role"] == "system"
            && body["messages"][1]["content"] == "Improve this kernel."
            && body["max_tokens"] == 64
            && headers["authorization"] == "Bearer secret-key";
        if ok {
            (StatusCode::OK, completion("(kernel k)"))
        } else {
            (
                StatusCode::BAD_REQUEST,
                format!("unexpected request {body}"),
            )
        }
    })
    .await;
    std::env::set_var("EVOKERNEL_TEST_KEY_A", "secret-key");
    let mut cfg = config(url);
    cfg.api_key_env = Some("EVOKERNEL_TEST_KEY_A".into());
    let reply = RemoteLlm::new(cfg)
        .unwrap()
        .complete(&request())
        .await
        .unwrap();
    assert_eq!(reply.text, "(kernel k)");
    assert_eq!(reply.model, "fake-coder-v2");
    assert_eq!((reply.prompt_tokens, reply.completion_tokens), (12, 7));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retries_server_errors_and_rate_limits_then_succeeds() {
    let (url, calls) = serve(|n, _, _| match n {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "overloaded".into()),
        1 => (StatusCode::TOO_MANY_REQUESTS, "slow down".into()),
        _ => (StatusCode::OK, completion("(kernel k)")),
    })
    .await;
    let reply = RemoteLlm::new(config(url))
        .unwrap()
        .complete(&request())
        .await
        .unwrap();
    assert_eq!(reply.text, "(kernel k)");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn gives_up_after_the_retries_with_the_last_error() {
    let (url, calls) = serve(|_, _, _| (StatusCode::BAD_GATEWAY, "upstream down".into())).await;
    let text = failure(config(url)).await;
    assert!(
        text.contains("502") && text.contains("upstream down"),
        "{text}"
    );
    assert!(text.contains("after 3 attempts"), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_client_error_fails_at_once_with_the_body() {
    let (url, calls) = serve(|_, _, _| {
        (
            StatusCode::NOT_FOUND,
            r#"{"error": {"message": "model fake-coder does not exist"}}"#.into(),
        )
    })
    .await;
    let text = failure(config(url)).await;
    assert!(
        text.contains("404") && text.contains("does not exist"),
        "{text}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reply_that_is_not_a_completion_is_named() {
    let (url, _) = serve(|_, _, _| (StatusCode::OK, r#"{"choices": []}"#.into())).await;
    let text = failure(config(url)).await;
    assert!(text.contains("no choices[0].message.content"), "{text}");
    let (url, _) = serve(|_, _, _| (StatusCode::OK, "<html>proxy page</html>".into())).await;
    let text = failure(config(url)).await;
    assert!(text.contains("not an OpenAI chat completion"), "{text}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_named() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let text = failure(config(url.clone())).await;
    assert!(
        text.contains(&url) && text.contains("cannot reach"),
        "{text}"
    );
    assert!(text.contains("after 3 attempts"), "{text}");
}

#[tokio::test]
async fn a_slow_endpoint_times_out() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                completion("late")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut cfg = config(format!("http://{addr}/v1"));
    cfg.timeout_s = 0.2;
    cfg.retries = 1;
    let text = failure(cfg).await;
    assert!(text.contains("no answer within 0.2 s"), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_missing_key_variable_is_named() {
    let mut cfg = config("http://127.0.0.1:9/v1".into());
    cfg.api_key_env = Some("EVOKERNEL_TEST_KEY_UNSET".into());
    let err = RemoteLlm::new(cfg).err().expect("the variable is unset");
    assert!(format!("{err:#}").contains("EVOKERNEL_TEST_KEY_UNSET"));
}
