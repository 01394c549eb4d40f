//! The HTTP routes of `serve`: request parsing (every field checked, a bad one answered 4xx
//! with an OpenAI-shaped JSON error naming it in `param`), the OpenAI completion / chat
//! responses and server-sent events with the uncertainty extension, `/v1/score`, the model
//! list, health, metrics, API-key checking and the request counters.
//! Test: `pytest tests/test_serve.py`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use lora_ens::Normalization;
use lora_ens::data::{Format, Question, parse_questions};
use lora_ens::generate::{FinishReason, GenerateOptions, StepEvent, TokenStep};
use lora_ens::questions::{Scoring, ScoringSpec};
use lora_ens::{Error, hash};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use super::engine::{Engine, GenMessage, Rejected};

/// What every route shares: the engine, the model's description and the API key.
#[derive(Debug)]
pub struct ServerState {
    engine: Arc<Engine>,
    model_id: String,
    models: Value,
    api_key: Option<String>,
    next_id: AtomicU64,
}

impl ServerState {
    /// The state of a server answering for `model_id` (the name clients send as `model`),
    /// requiring `api_key` as a Bearer token when given. Hashes the base model (sha256).
    pub fn new(
        engine: Arc<Engine>,
        model_id: impl Into<String>,
        api_key: Option<String>,
    ) -> lora_ens::Result<Arc<Self>> {
        let model_id = model_id.into();
        let ens = engine.ensemble();
        let path = ens.model_path();
        let models = json!({
            "object": "list",
            "data": [{
                "id": model_id,
                "object": "model",
                "created": 0,
                "owned_by": "lora-ens-rs",
                "members": ens.member_names(),
                "n_members": ens.n_members(),
                "base_model": {
                    "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "path": path.display().to_string(),
                    "sha256": hash::sha256_file(path)?,
                    "context_length": ens.config().context_length,
                },
            }],
        });
        Ok(Arc::new(Self {
            engine,
            model_id,
            models,
            api_key,
            next_id: AtomicU64::new(1),
        }))
    }

    /// The model id clients name.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    fn request_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:x}{:06x}",
            unix_time(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The routes, with the API-key check, the counters and the body-size limit.
pub fn router(state: Arc<ServerState>) -> Router {
    let limit = state.engine.limits.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/score", post(score))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer: `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// A 400 about the request field `param`.
    fn field(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            413 => "request_too_large",
            504 => "timeout_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }

    fn from_engine(e: &Error, param: &str) -> Self {
        match e {
            Error::Input(_) | Error::Label(_) | Error::Data { .. } => {
                Self::field(param, e.to_string())
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    fn rejected(r: Rejected) -> Self {
        match r {
            Rejected::Full => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "the server's queue is full: retry later",
                )
            },
            Rejected::Stopped => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ),
        }
    }

    fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the request ran past the server's time limit (--timeout)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

// ---------------------------------------------------------------------------------------------
// Middleware, small routes

/// The route label of a path in the counters (a fixed set, so clients cannot grow it).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/score" => "/v1/score",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// Compare without an early exit: the time depends only on the expected key's length.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, &b) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ b);
    }
    diff == 0
}

/// The API key (every route but `/health`) and the request counters.
async fn guard(State(s): State<Arc<ServerState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(req.uri().path());
    let response = match &s.api_key {
        Some(key) if route != "/health" => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if same_key(given.trim().as_bytes(), key.as_bytes()) {
                next.run(req).await
            } else {
                let mut r = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API key: send `Authorization: Bearer KEY`",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
        }
        _ => next.run(req).await,
    };
    s.engine.metrics.observe(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn health(State(s): State<Arc<ServerState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "queue_depth": s.engine.queue_depth(),
        "active_generations": s.engine.metrics.active_generations(),
    }))
}

async fn models(State(s): State<Arc<ServerState>>) -> Json<Value> {
    Json(s.models.clone())
}

async fn metrics(State(s): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.engine.metrics.render(s.engine.queue_depth()),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Request parsing

/// The body as a JSON value (413 over the size limit, 400 when it is not JSON).
fn json_body(body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Value> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than the server's limit (--max-body-bytes)".to_owned()
        } else {
            e.body_text()
        };
        ApiError {
            param: Some("body".to_owned()),
            ..ApiError::new(status, message)
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::field("body", format!("the body is not valid JSON: {e}")))
}

fn object(v: &Value) -> ApiResult<&Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| ApiError::field("body", "the body must be a JSON object"))
}

/// The value of `key` unless absent or null.
fn opt<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    opt(o, key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| ApiError::field(key, format!("`{key}` must be true or false")))
        })
        .transpose()
}

fn opt_uint(o: &Map<String, Value>, key: &str) -> ApiResult<Option<u64>> {
    opt(o, key)
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                ApiError::field(key, format!("`{key}` must be a non-negative integer"))
            })
        })
        .transpose()
}

fn opt_number(o: &Map<String, Value>, key: &str) -> ApiResult<Option<f64>> {
    opt(o, key)
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| ApiError::field(key, format!("`{key}` must be a number")))
        })
        .transpose()
}

/// The `model` field: absent, or the served model's id.
fn check_model(s: &ServerState, o: &Map<String, Value>) -> ApiResult<()> {
    match opt(o, "model") {
        None => Ok(()),
        Some(Value::String(m)) if *m == s.model_id => Ok(()),
        Some(Value::String(m)) => Err(ApiError {
            param: Some("model".to_owned()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "the model `{m}` does not exist: this server serves `{}`",
                    s.model_id
                ),
            )
        }),
        Some(_) => Err(ApiError::field("model", "`model` must be a string")),
    }
}

/// Which OpenAI route a generation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

/// The decoding parameters of a completion or chat request.
struct GenParams {
    opts: GenerateOptions,
    stream: bool,
    include_usage: bool,
    /// Completions: `logprobs` (top-k count); chat: `logprobs: true`.
    logprobs: bool,
}

fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn gen_params(o: &Map<String, Value>, api: Api, limits: &super::Limits) -> ApiResult<GenParams> {
    if let Some(n) = opt_uint(o, "n")?
        && n != 1
    {
        return Err(ApiError::field("n", "only `n: 1` is supported"));
    }
    if opt_bool(o, "echo")? == Some(true) {
        return Err(ApiError::field("echo", "`echo: true` is not supported"));
    }
    let max_key = if api == Api::Chat && opt(o, "max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let default_max = match api {
        Api::Completions => 16.min(limits.max_tokens),
        Api::Chat => limits.max_tokens,
    };
    let max_new_tokens =
        opt_uint(o, max_key)?.map_or(default_max, |n| usize::try_from(n).unwrap_or(usize::MAX));
    if max_new_tokens > limits.max_tokens {
        return Err(ApiError::field(
            max_key,
            format!(
                "`{max_key}` is {max_new_tokens}, more than this server's limit {} (--max-tokens)",
                limits.max_tokens
            ),
        ));
    }
    let temperature = opt_number(o, "temperature")?.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::field(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = opt_number(o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    let seed = match opt(o, "seed") {
        None => random_seed(),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| ApiError::field("seed", "`seed` must be an integer"))?,
    };
    let stop = match opt(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::field("stop", "`stop` must be a string or a list of strings")
            })?,
        Some(_) => {
            return Err(ApiError::field(
                "stop",
                "`stop` must be a string or a list of strings",
            ));
        }
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::field(
            "stop",
            "`stop` takes at most 4 non-empty strings",
        ));
    }
    let (logprobs, top_logprobs) = match api {
        Api::Completions => match opt_uint(o, "logprobs")? {
            Some(k) if k > 5 => {
                return Err(ApiError::field("logprobs", "`logprobs` must be 0 to 5"));
            }
            Some(k) => (true, k as usize),
            None => (false, 0),
        },
        Api::Chat => {
            let on = opt_bool(o, "logprobs")?.unwrap_or(false);
            let k = opt_uint(o, "top_logprobs")?.unwrap_or(0);
            if k > 20 {
                return Err(ApiError::field(
                    "top_logprobs",
                    "`top_logprobs` must be 0 to 20",
                ));
            }
            if k > 0 && !on {
                return Err(ApiError::field(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            (on, k as usize)
        }
    };
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match opt(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")
            .map_err(|_| {
                ApiError::field(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be true or false",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::field(
                "stream_options",
                "`stream_options` must be an object",
            ));
        }
    };
    Ok(GenParams {
        opts: GenerateOptions {
            max_new_tokens,
            temperature: temperature as f32,
            top_p: top_p as f32,
            seed,
            stop,
            top_logprobs,
        },
        stream,
        include_usage,
        logprobs,
    })
}

/// The text of a chat message's `content`: a string, or a list of `{"type": "text"}` parts.
fn message_content(v: Option<&Value>, at: &str) -> ApiResult<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| {
                p.get("text")
                    .and_then(Value::as_str)
                    .filter(|_| p.get("type").and_then(Value::as_str) == Some("text"))
                    .map(str::to_owned)
            })
            .collect::<Option<String>>()
            .ok_or_else(|| {
                ApiError::field(
                    &format!("{at}.content"),
                    "only text content parts (`{\"type\": \"text\", \"text\": ...}`) are supported",
                )
            }),
        _ => Err(ApiError::field(
            &format!("{at}.content"),
            format!("`{at}.content` must be a string"),
        )),
    }
}

/// The prompt's token ids, checked against the length limit.
fn encode_checked(s: &ServerState, text: &str, param: &str) -> ApiResult<Vec<u32>> {
    let ids = s
        .engine
        .ensemble()
        .encode_prompt(text)
        .map_err(|e| ApiError::from_engine(&e, param))?;
    check_prompt_length(s, ids, param)
}

/// `ids` if the prompt fits the request limit and leaves room in the context.
fn check_prompt_length(s: &ServerState, ids: Vec<u32>, param: &str) -> ApiResult<Vec<u32>> {
    let ens = s.engine.ensemble();
    let context = ens.config().context_length;
    let limit = s
        .engine
        .limits
        .max_prompt_tokens
        .min(context.saturating_sub(1));
    if ids.len() > limit {
        return Err(ApiError::field(
            param,
            format!(
                "the prompt has {} tokens, more than the limit of {limit} (the model's context \
                 length is {context})",
                ids.len()
            ),
        ));
    }
    if ids.is_empty() {
        return Err(ApiError::field(param, "the prompt has no tokens"));
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// Completions and chat

async fn completions(
    State(s): State<Arc<ServerState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let v = json_body(body)?;
    let o = object(&v)?;
    check_model(&s, o)?;
    let prompt = match opt(o, "prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        None => return Err(ApiError::field("prompt", "`prompt` is required")),
        Some(_) => {
            return Err(ApiError::field(
                "prompt",
                "`prompt` must be a string (or a list of one string)",
            ));
        }
    };
    let params = gen_params(o, Api::Completions, &s.engine.limits)?;
    let ids = encode_checked(&s, &prompt, "prompt")?;
    generation(s, ids, params, Api::Completions).await
}

async fn chat_completions(
    State(s): State<Arc<ServerState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let v = json_body(body)?;
    let o = object(&v)?;
    check_model(&s, o)?;
    let messages = match opt(o, "messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        None => return Err(ApiError::field("messages", "`messages` is required")),
        Some(_) => {
            return Err(ApiError::field(
                "messages",
                "`messages` must be a non-empty list of {role, content} objects",
            ));
        }
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::field(
                &format!("{at}.role"),
                format!("`{at}.role` must be a string"),
            )
        })?;
        if !["system", "user", "assistant", "developer"].contains(&role) {
            return Err(ApiError::field(
                &format!("{at}.role"),
                format!("`{at}.role` must be system, developer, user or assistant, got {role:?}"),
            ));
        }
        let role = if role == "developer" { "system" } else { role };
        turns.push((role.to_owned(), message_content(m.get("content"), &at)?));
    }
    let params = gen_params(o, Api::Chat, &s.engine.limits)?;
    let refs: Vec<(&str, &str)> = turns
        .iter()
        .map(|(r, c)| (r.as_str(), c.as_str()))
        .collect();
    let ids = s
        .engine
        .ensemble()
        .encode_chat(&refs)
        .map_err(|e| ApiError::from_engine(&e, "messages"))?;
    let ids = check_prompt_length(&s, ids, "messages")?;
    generation(s, ids, params, Api::Chat).await
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Builds the response objects of one generation.
struct Reply {
    state: Arc<ServerState>,
    api: Api,
    id: String,
    created: u64,
    logprobs: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Completions' `text_offset`: bytes of text so far.
    offset: usize,
}

impl Reply {
    fn token_text(&self, id: u32) -> String {
        self.state
            .engine
            .ensemble()
            .tokenizer()
            .decode(&[id], false)
            .unwrap_or_default()
    }

    /// `choices[].uncertainty` of these tokens: parallel lists, one entry per token.
    fn uncertainty(&self, tokens: &[&TokenStep]) -> Value {
        json!({
            "tokens": tokens.iter().map(|t| self.token_text(t.id)).collect::<Vec<_>>(),
            "token_ids": tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
            "prob": tokens.iter().map(|t| t.prob).collect::<Vec<_>>(),
            "entropy": tokens.iter().map(|t| t.entropy).collect::<Vec<_>>(),
            "expected_entropy": tokens.iter().map(|t| t.expected_entropy).collect::<Vec<_>>(),
            "mutual_information": tokens.iter().map(|t| t.mutual_information).collect::<Vec<_>>(),
        })
    }

    /// The OpenAI `logprobs` object of these tokens (`null` unless asked for).
    fn logprobs(&mut self, tokens: &[&TokenStep]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.api {
            Api::Chat => {
                let entry = |text: String, lp: f32| json!({"token": text, "logprob": lp, "bytes": text.as_bytes()});
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut e = entry(self.token_text(t.id), t.prob.ln());
                        e["top_logprobs"] = Value::Array(
                            t.top
                                .iter()
                                .map(|&(id, lp)| entry(self.token_text(id), lp))
                                .collect(),
                        );
                        e
                    })
                    .collect();
                json!({"content": content})
            }
            Api::Completions => {
                let texts: Vec<String> = tokens.iter().map(|t| self.token_text(t.id)).collect();
                let mut offsets = Vec::with_capacity(texts.len());
                for t in &texts {
                    offsets.push(self.offset);
                    self.offset += t.len();
                }
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut m = Map::new();
                        for &(id, lp) in &t.top {
                            m.insert(self.token_text(id), json!(lp));
                        }
                        Value::Object(m)
                    })
                    .collect();
                json!({
                    "tokens": texts,
                    "token_logprobs": tokens.iter().map(|t| t.prob.ln()).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    fn envelope(&self, object: &str, choices: Vec<Value>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".to_owned(), json!(self.id));
        m.insert("object".to_owned(), json!(object));
        m.insert("created".to_owned(), json!(self.created));
        m.insert("model".to_owned(), json!(self.state.model_id));
        m.insert("choices".to_owned(), Value::Array(choices));
        m
    }

    /// The whole answer of a non-streaming request.
    fn full(&mut self, text: String, tokens: &[TokenStep], finish: FinishReason) -> Value {
        let refs: Vec<&TokenStep> = tokens.iter().collect();
        let mut choice = json!({
            "index": 0,
            "logprobs": self.logprobs(&refs),
            "finish_reason": finish_name(finish),
            "uncertainty": self.uncertainty(&refs),
        });
        let object = match self.api {
            Api::Completions => {
                choice["text"] = json!(text);
                "text_completion"
            }
            Api::Chat => {
                choice["message"] = json!({"role": "assistant", "content": text});
                "chat.completion"
            }
        };
        let mut m = self.envelope(object, vec![choice]);
        m.insert("usage".to_owned(), self.usage());
        Value::Object(m)
    }

    /// One streamed chunk: a step's text delta and its token (if any).
    fn chunk(&mut self, event: &StepEvent, first: bool) -> Value {
        let refs: Vec<&TokenStep> = event.token.iter().collect();
        let mut choice = json!({
            "index": 0,
            "logprobs": self.logprobs(&refs),
            "finish_reason": event.finish.map(finish_name),
            "uncertainty": self.uncertainty(&refs),
        });
        let object = match self.api {
            Api::Completions => {
                choice["text"] = json!(event.text);
                "text_completion"
            }
            Api::Chat => {
                choice["delta"] = if first {
                    json!({"role": "assistant", "content": event.text})
                } else {
                    json!({"content": event.text})
                };
                "chat.completion.chunk"
            }
        };
        Value::Object(self.envelope(object, vec![choice]))
    }

    /// The final chunk of a stream with `stream_options.include_usage`.
    fn usage_chunk(&self) -> Value {
        let object = match self.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        };
        let mut m = self.envelope(object, Vec::new());
        m.insert("usage".to_owned(), self.usage());
        Value::Object(m)
    }
}

async fn generation(
    s: Arc<ServerState>,
    ids: Vec<u32>,
    params: GenParams,
    api: Api,
) -> ApiResult<Response> {
    let deadline = TokioInstant::now() + s.engine.limits.request_timeout;
    let prompt_tokens = ids.len();
    let rx = s
        .engine
        .generate(ids, params.opts)
        .map_err(ApiError::rejected)?;
    let reply = Reply {
        id: s.request_id(match api {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
        }),
        state: s,
        api,
        created: unix_time(),
        logprobs: params.logprobs,
        prompt_tokens,
        completion_tokens: 0,
        offset: 0,
    };
    if params.stream {
        return Ok(
            Sse::new(event_stream(rx, reply, deadline, params.include_usage))
                .keep_alive(KeepAlive::default())
                .into_response(),
        );
    }
    let mut rx = rx;
    let mut reply = reply;
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| ApiError::timeout())?;
        match msg {
            Some(Ok(event)) => {
                text.push_str(&event.text);
                tokens.extend(event.token);
                if let Some(finish) = event.finish {
                    reply.completion_tokens = tokens.len();
                    return Ok(Json(reply.full(text, &tokens, finish)).into_response());
                }
            }
            Some(Err(e)) => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the generation was dropped (the server is shutting down)",
                ));
            }
        }
    }
}

/// State of a server-sent event stream.
struct Streaming {
    rx: mpsc::UnboundedReceiver<GenMessage>,
    reply: Reply,
    deadline: TokioInstant,
    include_usage: bool,
    first: bool,
    /// Events still to send after the generation ended (usage, `[DONE]`).
    tail: Vec<Event>,
    ended: bool,
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// One chunk per generated token, then `data: [DONE]`. Dropping the stream (the client
/// went away) drops the receiver, which cancels the generation.
fn event_stream(
    rx: mpsc::UnboundedReceiver<GenMessage>,
    reply: Reply,
    deadline: TokioInstant,
    include_usage: bool,
) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    let st = Streaming {
        rx,
        reply,
        deadline,
        include_usage,
        first: true,
        tail: Vec::new(),
        ended: false,
    };
    stream::unfold(st, |mut st| async move {
        if let Some(e) = st.tail.pop() {
            return Some((Ok(e), st));
        }
        if st.ended {
            return None;
        }
        let msg = tokio::time::timeout_at(st.deadline, st.rx.recv()).await;
        let done = Event::default().data("[DONE]");
        let event = match msg {
            Ok(Some(Ok(event))) => {
                st.reply.completion_tokens += usize::from(event.token.is_some());
                let chunk = data(&st.reply.chunk(&event, st.first));
                st.first = false;
                if event.finish.is_some() {
                    st.ended = true;
                    st.tail.push(done);
                    if st.include_usage {
                        st.tail.push(data(&st.reply.usage_chunk()));
                    }
                }
                chunk
            }
            Ok(Some(Err(e))) => {
                st.ended = true;
                st.tail.push(done);
                data(&ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e).body())
            }
            Ok(None) => {
                st.ended = true;
                st.tail.push(done);
                data(
                    &ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the generation was dropped (the server is shutting down)",
                    )
                    .body(),
                )
            }
            Err(_) => {
                st.ended = true;
                st.rx.close();
                st.tail.push(done);
                data(&ApiError::timeout().body())
            }
        };
        Some((Ok(event), st))
    })
}

// ---------------------------------------------------------------------------------------------
// Scoring

/// `POST /v1/score`: one generic JSONL question object (answered with one record) or a list
/// of them (a list of records). Query: `scoring` (`labels` / `choices`), `normalization`,
/// `members` (`true`: each member's probabilities too).
async fn score(
    State(s): State<Arc<ServerState>>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let known = ["scoring", "normalization", "members"];
    if let Some(k) = query.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            format!("unknown query parameter `{k}` (known: scoring, normalization, members)"),
        ));
    }
    let mode = query
        .get("scoring")
        .map(|m| Scoring::from_name(m))
        .transpose()
        .map_err(|e| ApiError::field("scoring", e.to_string()))?;
    let norm = query
        .get("normalization")
        .map(|n| Normalization::from_name(n))
        .transpose()
        .map_err(|e| ApiError::field("normalization", e.to_string()))?;
    let members = match query.get("members").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::field(
                "members",
                format!("`members` must be true or false, got {other:?}"),
            ));
        }
    };
    let v = json_body(body)?;
    let (single, items) = match &v {
        Value::Object(_) => (true, std::slice::from_ref(&v)),
        Value::Array(a) if !a.is_empty() => (false, a.as_slice()),
        _ => {
            return Err(ApiError::field(
                "body",
                "the body must be a question object or a non-empty list of them",
            ));
        }
    };
    if items.len() > s.engine.limits.max_questions {
        return Err(ApiError::field(
            "body",
            format!(
                "{} questions, more than this server's limit of {} per request (--max-questions)",
                items.len(),
                s.engine.limits.max_questions
            ),
        ));
    }
    let questions = parse_items(items, single)?;
    let spec = ScoringSpec::resolve(mode, norm, s.engine.ensemble().manifest());
    check_lengths(&s, &questions, &spec, single)?;
    let deadline = TokioInstant::now() + s.engine.limits.request_timeout;
    let rx = s
        .engine
        .score(questions, spec, members)
        .map_err(ApiError::rejected)?;
    let records = tokio::time::timeout_at(deadline, rx)
        .await
        .map_err(|_| ApiError::timeout())?
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request was dropped (the server is shutting down)",
            )
        })?
        .map_err(|e| ApiError::from_engine(&e, "body"))?;
    // The records as structs, so their keys keep the schema's order.
    Ok(if single {
        Json(records.into_iter().next()).into_response()
    } else {
        Json(records).into_response()
    })
}

/// Parse question objects with the generic JSONL reader (as `infer` reads a `.jsonl` file);
/// an error names the question's index and the field.
fn parse_items(items: &[Value], single: bool) -> ApiResult<Vec<Question>> {
    let at = |i: usize| {
        if single {
            "body".to_owned()
        } else {
            format!("body[{i}]")
        }
    };
    let mut questions = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if !item.is_object() {
            return Err(ApiError::field(
                &at(i),
                "each question must be a JSON object",
            ));
        }
        let line = item.to_string();
        let mut q = parse_questions(&line, Path::new("request.jsonl"), Some(Format::Jsonl), None)
            .map_err(|e| {
            let reason = match e {
                Error::Data { reason, .. } => reason,
                other => other.to_string(),
            };
            ApiError::field(&at(i), format!("{}: {reason}", at(i)))
        })?;
        for q in &mut q {
            if item.get("id").is_none() {
                q.id = format!("request-{}", i + 1);
            }
        }
        questions.extend(q);
    }
    Ok(questions)
}

/// Refuse a question whose prompt is longer than the model's context, naming it.
fn check_lengths(
    s: &ServerState,
    questions: &[Question],
    spec: &ScoringSpec,
    single: bool,
) -> ApiResult<()> {
    let ens = s.engine.ensemble();
    let context = ens.config().context_length;
    for (i, q) in questions.iter().enumerate() {
        let text = match spec.mode {
            Scoring::Labels => lora_ens::prompt::label_prompt(&q.question, &q.choices, &q.labels)
                .map_err(|e| ApiError::from_engine(&e, "body"))?,
            Scoring::Choices => lora_ens::prompt::choice_context(&q.question),
        };
        let longest = match spec.mode {
            Scoring::Labels => 1,
            Scoring::Choices => q
                .choices
                .iter()
                .map(|c| {
                    ens.tokenizer()
                        .encode(&lora_ens::prompt::choice_continuation(c), false)
                        .map_or(0, |t| t.len())
                })
                .max()
                .unwrap_or(0),
        };
        let n = ens
            .encode_prompt(&text)
            .map_err(|e| ApiError::from_engine(&e, "body"))?
            .len()
            + longest;
        if n > context {
            let at = if single {
                "body".to_owned()
            } else {
                format!("body[{i}]")
            };
            return Err(ApiError::field(
                &at,
                format!(
                    "question {}: the prompt and answer take {n} tokens, more than the model's \
                     context length {context}",
                    q.id
                ),
            ));
        }
    }
    Ok(())
}
