//! The HTTP server (axum): recommendations for a known user or an ad-hoc history, similar
//! items, health, Prometheus metrics and the OpenAPI document.
//!
//! The model runs on tokio's blocking pool, never on the async workers. Bad input gets a 4xx
//! `{"error": {"field", "message"}}` naming the field; the request body is capped at
//! `ServeConfig::max_body_bytes`. With `explain: true`, a recommendation for a known user
//! carries the `reason` cached for that (user, item) by the RecGPT explanation stage, handed in
//! as plain [`Explanations`]; no language model runs in the request path. With a
//! [`TagFusion`], a known user with cached tags is ranked by RecGPT's fused score
//! `α · model + (1 − α) · tag match` (`crate::fused`), again from plain data. Every answer
//! names the kernel it ran ([`KernelInfo`]); `/metrics` carries it as an info gauge.

mod error;
mod metrics;
mod openapi;
mod request;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
/// The application type, re-exported so that callers need no axum dependency.
pub use axum::Router;
use serde::Serialize;

pub use error::ApiError;
pub use metrics::Metrics;
pub use request::{RecommendRequest, Who};

use crate::data::Dataset;
use crate::eval::top_k;
use crate::fused::{fuse, Alpha, TagMatcher};
use crate::model::{Checkpoint, Inference, SasRec};

/// Limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct ServeConfig {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The largest `k` a request may ask for.
    pub max_k: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_body_bytes: 64 * 1024,
            max_k: 100,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    model: SasRec,
    /// The model's weights laid out for one history at a time: what recommendations run.
    inference: Inference,
    dataset: Dataset,
    /// The model's name in responses: `sasrec@` and the kernel hash's first 12 digits.
    model_name: String,
    kernel: KernelInfo,
    item_index: HashMap<String, u32>,
    user_index: HashMap<String, usize>,
    /// Item embeddings scaled to unit length, row-major `[n_items, d_model]`.
    unit_embeddings: Vec<f32>,
    config: ServeConfig,
    metrics: Metrics,
    explanations: Explanations,
    fusion: Option<TagFusion>,
}

/// RecGPT's tag-aware fused ranking for serving: α, every item's tags (as a matcher by dense
/// item id) and the tags of each user's cached profile, by raw user id. Plain data, so that
/// the server needs neither a database nor a language model.
#[derive(Clone, Debug)]
pub struct TagFusion {
    pub alpha: Alpha,
    pub items: TagMatcher,
    pub users: HashMap<String, Vec<String>>,
}

/// Cached explanation sentences by (raw user id, raw item id): plain data, so that the server
/// needs neither a database nor a language model.
#[derive(Clone, Debug, Default)]
pub struct Explanations {
    by_pair: HashMap<(String, String), String>,
}

impl Explanations {
    /// Records why `user` may like `item`; a later sentence for the same pair replaces it.
    pub fn insert(&mut self, user: &str, item: &str, sentence: &str) {
        self.by_pair
            .insert((user.to_string(), item.to_string()), sentence.to_string());
    }

    /// The sentence for (user, item), if one is cached.
    pub fn get(&self, user: &str, item: &str) -> Option<&str> {
        self.by_pair
            .get(&(user.to_string(), item.to_string()))
            .map(String::as_str)
    }

    /// The number of cached sentences.
    pub fn len(&self) -> usize {
        self.by_pair.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }
}

/// One recommended item.
#[derive(Debug, Serialize)]
pub struct Recommendation {
    pub item_id: String,
    pub title: String,
    pub score: f32,
    /// Why, in a sentence: only with `explain: true`, for a known user, when the RecGPT
    /// explanation stage cached one for this item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Recommendations {
    pub items: Vec<Recommendation>,
    pub model: String,
    pub kernel: KernelInfo,
}

/// The kernel the server runs: its name, its identity (the SHA-256 of its canonical text,
/// the hash the discovered-kernel database keys it by) and, for a kernel a campaign found,
/// its program id and campaign.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelInfo {
    pub name: String,
    pub hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

impl KernelInfo {
    /// The kernel of a checkpoint's model.
    pub fn of(checkpoint: &Checkpoint) -> crate::Result<KernelInfo> {
        let kernel = &checkpoint.model.kernel;
        let source = checkpoint.kernel_source.as_ref();
        Ok(KernelInfo {
            name: kernels::akl::parse(&kernel.text)
                .map_err(kernels::Error::from)?
                .name,
            hash: kernel.hash.clone(),
            program_id: source.map(|s| s.program_id),
            campaign: source.map(|s| s.campaign.clone()),
        })
    }
}

/// The application for a loaded checkpoint, without explanations.
pub fn app(checkpoint: Checkpoint, config: ServeConfig) -> crate::Result<Router> {
    app_with_explanations(checkpoint, config, Explanations::default())
}

/// The application for a loaded checkpoint that answers `explain: true` from `explanations`.
pub fn app_with_explanations(
    checkpoint: Checkpoint,
    config: ServeConfig,
    explanations: Explanations,
) -> crate::Result<Router> {
    app_with_context(checkpoint, config, explanations, None)
}

/// The application for a loaded checkpoint with cached explanations and, optionally, fused
/// ranking of known users by their tags; `fusion.items` must cover the checkpoint's items.
pub fn app_with_context(
    checkpoint: Checkpoint,
    config: ServeConfig,
    explanations: Explanations,
    fusion: Option<TagFusion>,
) -> crate::Result<Router> {
    let kernel = KernelInfo::of(&checkpoint)?;
    let Checkpoint { model, dataset, .. } = checkpoint;
    if let Some(f) = &fusion {
        if f.items.len() != dataset.items.len() {
            return Err(crate::Error::InvalidRequest(format!(
                "fused serving: tags for {} items, the checkpoint has {}",
                f.items.len(),
                dataset.items.len()
            )));
        }
    }
    let embeddings = model.item_embeddings()?;
    let unit_embeddings = embeddings
        .iter()
        .flat_map(|row| {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(move |x| x / norm)
        })
        .collect();
    let state = Arc::new(AppState {
        model_name: format!("sasrec@{}", &model.kernel.hash[..12]),
        kernel,
        item_index: dataset.item_index(),
        user_index: dataset
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), i))
            .collect(),
        unit_embeddings,
        inference: model.inference()?,
        model,
        dataset,
        config,
        metrics: Metrics::default(),
        explanations,
        fusion,
    });
    Ok(Router::new()
        .route("/v1/recommend", post(recommend))
        .route("/v1/items/{id}/similar", get(similar))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state))
}

/// Serves `app` on `listener` until Ctrl-C, letting requests in flight finish.
pub async fn run(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // If the signal cannot be watched, serve until the process is killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await
}

async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = metrics::route_of(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .record(route, response.status().as_u16(), started.elapsed());
    response
}

/// Runs CPU work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the model task failed: {e}")))?
}

impl AppState {
    fn describe(&self, picked: Vec<(u32, f32)>) -> Vec<Recommendation> {
        picked
            .into_iter()
            .map(|(i, score)| {
                let item = &self.dataset.items[i as usize];
                Recommendation {
                    item_id: item.raw_id.clone(),
                    title: item.meta.title.clone(),
                    score,
                    reason: None,
                }
            })
            .collect()
    }

    fn check_k(&self, k: usize) -> Result<(), ApiError> {
        if (1..=self.config.max_k).contains(&k) {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "k",
                format!("k is {k}; it must lie in 1..={}", self.config.max_k),
            ))
        }
    }
}

async fn recommend(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Recommendations>, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            "body",
            format!(
                "{} (the limit is {} bytes)",
                e.body_text(),
                state.config.max_body_bytes
            ),
        )
    })?;
    let request = RecommendRequest::parse(&body)?;
    state.check_k(request.k)?;
    let history = request.history_ids(&state)?;
    let worker = state.clone();
    let (items, fused_by) = blocking(move || {
        let scores = worker
            .inference
            .scores(&history)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let excluded: &[u32] = if request.exclude_seen { &history } else { &[] };
        // Only a known user with cached tags has something to fuse with.
        let fusion = match (&worker.fusion, &request.who) {
            (Some(fusion), Who::User(user)) => fusion.users.get(user).map(|t| (fusion, t)),
            _ => None,
        };
        let scores = match fusion {
            Some((fusion, tags)) => fuse(&scores, &fusion.items.matches(tags), fusion.alpha),
            None => scores,
        };
        let mut items = worker.describe(top_k(&scores, request.k, excluded));
        if let (true, Who::User(user)) = (request.explain, &request.who) {
            for item in &mut items {
                item.reason = worker
                    .explanations
                    .get(user, &item.item_id)
                    .map(str::to_string);
            }
        }
        Ok((items, fusion.map(|(f, _)| f.alpha.get())))
    })
    .await?;
    let model = match fused_by {
        Some(alpha) => format!("{}+tags(alpha={alpha})", state.model_name),
        None => state.model_name.clone(),
    };
    Ok(Json(Recommendations {
        items,
        model,
        kernel: state.kernel.clone(),
    }))
}

#[derive(serde::Deserialize)]
struct SimilarQuery {
    k: Option<usize>,
}

async fn similar(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<SimilarQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Recommendations>, ApiError> {
    let k = query
        .map_err(|e| ApiError::invalid("k", format!("k must be a whole number: {e}")))?
        .k
        .unwrap_or(10);
    state.check_k(k)?;
    let Some(&item) = state.item_index.get(&id) else {
        return Err(ApiError::unknown("id", format!("no item has id `{id}`")));
    };
    let worker = state.clone();
    let items = blocking(move || {
        let d = worker.model.config.d_model;
        let unit = &worker.unit_embeddings;
        let own = &unit[item as usize * d..][..d];
        let cosines: Vec<f32> = unit
            .chunks_exact(d)
            .map(|row| row.iter().zip(own).map(|(a, b)| a * b).sum())
            .collect();
        Ok(worker.describe(top_k(&cosines, k, &[item])))
    })
    .await?;
    Ok(Json(Recommendations {
        items,
        model: state.model_name.clone(),
        kernel: state.kernel.clone(),
    }))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "model": state.model_name,
        "kernel": state.kernel,
        "items": state.dataset.items.len(),
        "users": state.dataset.users.len(),
    }))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.kernel),
    )
        .into_response()
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "path",
        format!(
            "no route {} {} (see GET /openapi.json)",
            request.method(),
            request.uri().path()
        ),
    )
}
