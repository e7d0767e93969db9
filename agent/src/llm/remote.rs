//! Any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`), with a
//! per-call timeout and retries with exponential backoff for what may pass: connection
//! failures, timeouts, 429 and 5xx. Other answers fail at once with the status and the
//! start of the body, which usually says what to fix (a wrong model name, a bad key).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::{Reply, Request};

/// Where and how to reach the endpoint; the key itself stays in the environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// For example `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    /// The environment variable that holds the API key (none: no Authorization header).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Attempts after the first.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first wait between attempts; each later one doubles it.
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
}

fn default_timeout() -> f64 {
    120.0
}

fn default_retries() -> u32 {
    3
}

fn default_backoff() -> f64 {
    1.0
}

/// The longest wait a `Retry-After` header may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct RemoteLlm {
    config: RemoteConfig,
    api_key: Option<String>,
    client: reqwest::Client,
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
    /// What the server asked us to wait (`Retry-After`).
    wait: Option<Duration>,
}

impl RemoteLlm {
    pub fn new(config: RemoteConfig) -> anyhow::Result<Self> {
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            bail!(
                "timeout_s must be a positive number of seconds, got {}",
                config.timeout_s
            );
        }
        if !(config.backoff_s >= 0.0 && config.backoff_s.is_finite()) {
            bail!(
                "backoff_s must be a number of seconds >= 0, got {}",
                config.backoff_s
            );
        }
        let api_key = match &config.api_key_env {
            Some(var) => Some(std::env::var(var).with_context(|| {
                format!("the API key variable {var} is not set (api_key_env in the config)")
            })?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_s))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            config,
            api_key,
            client,
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        )
    }

    /// Sends `request`, retrying what may pass; the error names the endpoint and the last
    /// failure.
    pub async fn complete(&self, request: &Request) -> anyhow::Result<Reply> {
        let mut backoff = Duration::from_secs_f64(self.config.backoff_s);
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match self.attempt(request).await {
                Ok(mut reply) => {
                    reply.seconds = started.elapsed().as_secs_f64();
                    return Ok(reply);
                }
                Err(failure) if failure.retry && attempt < self.config.retries => {
                    attempt += 1;
                    tracing::warn!(
                        "{}: {} (attempt {attempt} of {}, retrying)",
                        self.url(),
                        failure.message,
                        self.config.retries + 1
                    );
                    tokio::time::sleep(failure.wait.unwrap_or(backoff).min(MAX_WAIT)).await;
                    backoff *= 2;
                }
                Err(failure) => {
                    return Err(anyhow!(
                        "{}: {} (after {} attempt{})",
                        self.url(),
                        failure.message,
                        attempt + 1,
                        if attempt == 0 { "" } else { "s" }
                    ))
                }
            }
        }
    }

    async fn attempt(&self, request: &Request) -> Result<Reply, Failure> {
        let body = serde_json::json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        });
        let mut call = self.client.post(self.url()).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(|e| Failure {
            message: if e.is_timeout() {
                format!("no answer within {} s", self.config.timeout_s)
            } else {
                format!("cannot reach the endpoint: {e}")
            },
            retry: true,
            wait: None,
        })?;
        let status = response.status();
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| Failure {
            message: format!("the answer broke off: {e}"),
            retry: true,
            wait: None,
        })?;
        if !status.is_success() {
            return Err(Failure {
                message: format!("HTTP {status}: {}", excerpt(&text)),
                retry: status.as_u16() == 429 || status.is_server_error(),
                wait,
            });
        }
        parse_reply(&text, &self.config.model).map_err(|message| Failure {
            message,
            retry: false,
            wait: None,
        })
    }
}

/// The start of a body, on one line, for an error message.
fn excerpt(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

#[derive(Deserialize)]
struct Completion {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

fn parse_reply(text: &str, asked_model: &str) -> Result<Reply, String> {
    let completion: Completion = serde_json::from_str(text).map_err(|e| {
        format!(
            "the answer is not an OpenAI chat completion ({e}): {}",
            excerpt(text)
        )
    })?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| "the answer has no choices[0].message.content".to_string())?;
    let usage = completion.usage.unwrap_or(Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
    });
    Ok(Reply {
        text: content,
        model: completion.model.unwrap_or_else(|| asked_model.to_string()),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        seconds: 0.0,
    })
}
