//! The HTTP server (axum on our own accept loop): recommendations for a known user or an
//! ad-hoc history, similar items, health, Prometheus metrics and the OpenAPI document.
//!
//! The model's scoring runs on rayon's global pool, a fixed number of threads (`--threads`,
//! every core by default), never on the async workers. Bad input gets a 4xx
//! `{"error": {"field", "message"}}` naming the field, on every path: the router's
//! fallbacks, the extractors' refusals and hyper's own answers to request heads it cannot
//! read all take that shape (`connection.rs`). The server stays reachable under abuse
//! (`server.rs`): request heads and bodies must arrive in time, idle connections close,
//! connections are capped (by `ServeConfig::max_connections` and the open-file limit) and,
//! at the cap, the oldest that has not sent a whole request is shed for the newcomer;
//! requests beyond `ServeConfig::max_in_flight` get 503 with `Retry-After`. With
//! `explain: true`, a recommendation for a known user carries the `reason` cached for that
//! (user, item) by the RecGPT explanation stage, handed in as plain [`Explanations`]; no
//! language model runs in the request path, and an answer that lacks reasons says why.
//! With a [`TagFusion`], a known user with cached tags is ranked by RecGPT's fused score
//! `α · model + (1 − α) · tag match` (`crate::fused`), again from plain data. Every answer
//! names the kernel it ran ([`KernelInfo`]); `/metrics` carries it as an info gauge.

mod connection;
mod error;
mod metrics;
mod openapi;
mod request;
mod server;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use metrics::Metrics;
pub use request::{RawId, RecommendBody, RecommendRequest, Who};
pub use server::{connection_cap, run, serve};

use crate::data::Dataset;
use crate::eval::top_k;
use crate::fused::{fuse, Alpha, TagMatcher};
use crate::model::{Checkpoint, Inference, SasRec};

/// The largest `k` a request may ask for (the OpenAPI document states it; a test holds the
/// two equal).
pub const MAX_K: usize = 100;

/// Limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct ServeConfig {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long a request head may take to arrive: from the connection's opening for its
    /// first request, from its first byte for a later one.
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive once its head has.
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may wait, silent, for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once at most (fewer when the open-file limit leaves less room:
    /// [`connection_cap`]).
    pub max_connections: usize,
    /// Requests being answered at once at most; more are refused with 503 and
    /// `Retry-After`.
    pub max_in_flight: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_in_flight: 128,
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
    /// `/openapi.json`, generated once.
    openapi: Bytes,
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
/// needs neither a database nor a language model. When there are none, it keeps why, which
/// answers to `explain: true` repeat.
#[derive(Clone, Debug)]
pub struct Explanations {
    by_pair: HashMap<(String, String), String>,
    why_none: String,
}

impl Default for Explanations {
    fn default() -> Self {
        Explanations::none("the server was started without RecGPT explanations")
    }
}

impl Explanations {
    /// No explanations, because `why` (a clause a client reads: "no database at x.db").
    pub fn none(why: impl Into<String>) -> Explanations {
        Explanations {
            by_pair: HashMap::new(),
            why_none: why.into(),
        }
    }

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

    /// Fills each item's `reason` for `who`, and says why some items have none.
    fn explain(&self, who: &Who, items: &mut [Recommendation]) -> Option<String> {
        let user = match who {
            Who::History(_) => {
                return Some(
                    "explanations are cached per known user; an ad-hoc history has none (ask \
                     with user_id)"
                        .into(),
                )
            }
            Who::User(_) if self.is_empty() => return Some(self.why_none.clone()),
            Who::User(user) => user,
        };
        for item in items.iter_mut() {
            item.reason = self.get(user, &item.item_id).map(str::to_string);
        }
        let missing = items.iter().filter(|i| i.reason.is_none()).count();
        (missing > 0).then(|| {
            format!(
                "no explanation is cached for user `{user}` and {missing} of these {} items \
                 (`evokernel recsys enrich --explain-checkpoint` writes them)",
                items.len()
            )
        })
    }
}

/// One recommended item.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendation {
    pub item_id: String,
    pub title: String,
    pub score: f32,
    /// Why this user may like the item, in one sentence: only with `explain: true`, for a
    /// known user, when the RecGPT explanation stage cached one for this item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Items, best first, with the model and kernel that ranked them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendations {
    pub items: Vec<Recommendation>,
    /// `sasrec@` and the kernel hash's first 12 hex digits (and `+tags(alpha=…)` when
    /// ranked by RecGPT's fused score).
    pub model: String,
    pub kernel: KernelInfo,
    /// Only with `explain: true`, when some items carry no `reason`: why (no explanations
    /// loaded, an ad-hoc history, or none cached for these items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanations_unavailable: Option<String>,
}

/// The kernel the server runs: its name, its identity (the SHA-256 of its canonical text,
/// the hash the discovered-kernel database keys it by) and, for a kernel a campaign found,
/// its program id and campaign.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct KernelInfo {
    /// The AKL program's name.
    pub name: String,
    /// SHA-256 of the kernel's canonical AKL text (64 hex digits): its identity in the
    /// discovered-kernel database.
    pub hash: String,
    /// Its program id in the database, when a campaign found it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_id: Option<i64>,
    /// The campaign that found it.
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

/// Liveness, with the model, the kernel and the catalogue's size.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub model: String,
    pub kernel: KernelInfo,
    pub items: usize,
    pub users: usize,
}

/// A server application: the router and the state its connections share.
pub struct App {
    router: Router,
    state: Arc<AppState>,
}

/// The application for a loaded checkpoint, without explanations.
pub fn app(checkpoint: Checkpoint, config: ServeConfig) -> crate::Result<App> {
    app_with_explanations(checkpoint, config, Explanations::default())
}

/// The application for a loaded checkpoint that answers `explain: true` from `explanations`.
pub fn app_with_explanations(
    checkpoint: Checkpoint,
    config: ServeConfig,
    explanations: Explanations,
) -> crate::Result<App> {
    app_with_context(checkpoint, config, explanations, None)
}

/// One route: its method, its path (axum's and OpenAPI's `{id}` syntax alike) and its
/// handler. The router is built from [`routes`] alone, and a test holds the OpenAPI document
/// to the same list.
struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
    Route {
        method,
        path,
        handler: on(filter, handler),
    }
}

fn routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/recommend", recommend),
        route(Method::GET, "/v1/items/{id}/similar", similar),
        route(Method::GET, "/healthz", healthz),
        route(Method::GET, "/metrics", metrics_text),
        route(Method::GET, "/openapi.json", openapi_json),
    ]
}

/// The application for a loaded checkpoint with cached explanations and, optionally, fused
/// ranking of known users by their tags; `fusion.items` must cover the checkpoint's items.
pub fn app_with_context(
    checkpoint: Checkpoint,
    config: ServeConfig,
    explanations: Explanations,
    fusion: Option<TagFusion>,
) -> crate::Result<App> {
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
        openapi: openapi::document_json().into(),
    });
    let router = routes()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state.clone());
    Ok(App { router, state })
}

/// Counts every answer by route and status, with its latency.
async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(metrics::OTHER_ROUTE.to_string(), |m| m.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .record(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Holds the number of requests being answered at once to `max_in_flight`.
async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(_in_flight) = state.metrics.admit(state.config.max_in_flight) else {
        return ApiError::busy(format!(
            "the server is answering as many requests as it may ({}); try again shortly",
            state.config.max_in_flight
        ))
        .into_response();
    };
    next.run(request).await
}

/// Runs the model's CPU work on rayon's global pool, a fixed set of threads.
async fn score<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        // A request whose client has gone is not scored.
        if answer.is_closed() {
            return;
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(work))
            .unwrap_or_else(|_| Err(ApiError::internal("the model panicked while scoring")));
        let _ = answer.send(outcome);
    });
    answered
        .await
        .map_err(|_| ApiError::internal("the scoring pool dropped the request"))?
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

    /// The request body, read within `body_read_timeout` and `max_body_bytes`.
    async fn read_body(&self, request: Request) -> Result<Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        let timeout = self.config.body_read_timeout;
        match tokio::time::timeout(timeout, Bytes::from_request(request, &())).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err(ApiError::new(
                e.status(),
                "body",
                format!("{} (the limit is {limit} bytes)", e.body_text()),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body",
                format!("the body did not all arrive within {timeout:?}"),
            )),
        }
    }
}

fn check_k(k: usize) -> Result<(), ApiError> {
    if (1..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "k",
            format!("k is {k}; it must lie in 1..={MAX_K}"),
        ))
    }
}

/// Recommend items for a known user or an ad-hoc history.
#[utoipa::path(
    post,
    path = "/v1/recommend",
    request_body = RecommendBody,
    responses(
        (status = 200, description = "Items, best first.", body = Recommendations),
        (status = 400, description = "Malformed JSON, or a body that is not an object (field `body`).", body = ErrorBody),
        (status = 404, description = "Unknown user (`user_id`) or item (`history[i]`).", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (field `body`).", body = ErrorBody),
        (status = 413, description = "The body exceeds the size limit (field `body`).", body = ErrorBody),
        (status = 422, description = "A field with an unacceptable value: k out of range, empty history, both or neither of user_id and history, an unknown field.", body = ErrorBody),
    )
)]
async fn recommend(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Recommendations>, ApiError> {
    let body = state.read_body(request).await?;
    let request = RecommendRequest::parse(&body)?;
    check_k(request.k)?;
    let history = request.history_ids(&state)?;
    let worker = state.clone();
    let (items, fused_by, explanations_unavailable) = score(move || {
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
        let unavailable = if request.explain {
            worker.explanations.explain(&request.who, &mut items)
        } else {
            None
        };
        Ok((items, fusion.map(|(f, _)| f.alpha.get()), unavailable))
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
        explanations_unavailable,
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SimilarQuery {
    /// How many items to return.
    #[param(minimum = 1, maximum = 100, default = 10)]
    k: Option<usize>,
}

/// Items whose embeddings are closest (cosine) to an item's.
#[utoipa::path(
    get,
    path = "/v1/items/{id}/similar",
    params(("id" = String, Path, description = "An item id of the training data."), SimilarQuery),
    responses(
        (status = 200, description = "Items, most similar first.", body = Recommendations),
        (status = 400, description = "The id is not valid percent-encoded UTF-8 (field `id`).", body = ErrorBody),
        (status = 404, description = "Unknown item (field `id`).", body = ErrorBody),
        (status = 422, description = "k out of range or not a number (field `k`).", body = ErrorBody),
    )
)]
async fn similar(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<SimilarQuery>, QueryRejection>,
) -> Result<Json<Recommendations>, ApiError> {
    let Path(id) = id.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "id",
            format!("the item id in the path cannot be read: {}", e.body_text()),
        )
    })?;
    let k = query
        .map_err(|e| ApiError::invalid("k", format!("k must be a whole number: {e}")))?
        .k
        .unwrap_or(10);
    check_k(k)?;
    let Some(&item) = state.item_index.get(&id) else {
        return Err(ApiError::unknown("id", format!("no item has id `{id}`")));
    };
    let worker = state.clone();
    let items = score(move || {
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
        explanations_unavailable: None,
    }))
}

/// Liveness, with the model name, the kernel and the catalogue size.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Serving.", body = Health)))]
async fn healthz(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        model: state.model_name.clone(),
        kernel: state.kernel.clone(),
        items: state.dataset.items.len(),
        users: state.dataset.users.len(),
    })
}

/// Prometheus text: the kernel served as the gauge `recsys_kernel_info{name, hash[,
/// program_id, campaign]} = 1`, requests by route and status, latency histograms, open
/// connections, requests in flight, connections closed by the server and failed accepts.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain"))
)]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.kernel),
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "OpenAPI 3.1 JSON.", body = Object, content_type = "application/json"))
)]
async fn openapi_json(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
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

/// A path the router knows asked with another method; axum adds the `Allow` header.
async fn method_not_allowed(request: Request) -> ApiError {
    let path = request.uri().path();
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let allowed: Vec<String> = routes()
        .iter()
        .filter(|r| Some(r.path) == template)
        .map(|r| r.method.to_string())
        .collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
        format!(
            "{} is not allowed on {path}; use {} (see GET /openapi.json)",
            request.method(),
            allowed.join(" or ")
        ),
    )
}
