//! The local HTTP/JSON API (axum): SQL, status, peers, health, integrity, backup, row
//! history and Prometheus metrics.
//!
//! Every route but `/v1/health` requires `Authorization: Bearer <token>` when a token is
//! configured (the config refuses to bind beyond loopback without one). Store work runs on
//! tokio's blocking pool: queries read a redb snapshot on that thread, writes go through
//! the replica's owner thread (group commit), so no redb transaction crosses an `.await`.
//! A write statement is answered only after its durable commit, then the sync sessions
//! are told to push it. Errors are `{"error": "..."}` with a 4xx/5xx status. README "HTTP
//! API" documents each route; keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use edgestore::error::{ReadError, StorageError, StoreFault, WriteError};
use edgestore::handle::StoreHealth;
use edgestore::sql::{self, ExecOptions, Interrupt, InterruptCause, MemoryPool, SqlError};
use edgestore::{ReplicaHandle, Value};
use serde::Deserialize;
use serde_json::{json, Value as JsonValue};
use sync_protocol::transport::{FaultSwitch, SyncNode};

use crate::config::{parse_node_id, Config, PeerList};
use crate::json::{check_integer_literals, from_json, to_json};
use crate::metrics::{self, ApiCounters, StoreFigures};
use crate::statement_cache::StatementCache;

/// Seconds a client is told to wait (`Retry-After`) when the node cannot answer now: over
/// the connection cap (`serve.rs`), over `api.statements_max`, or while the store reopens.
pub const RETRY_AFTER_S: u64 = 1;

/// What the handlers share.
#[derive(Debug)]
pub struct Node {
    pub handle: ReplicaHandle,
    pub sync: SyncNode,
    pub config: Config,
    pub sync_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub counters: ApiCounters,
    pub started: Instant,
    /// Serialises edits of the peer list file.
    pub peers_file: tokio::sync::Mutex<()>,
    /// Parsed statements by SQL text, bounded by the text they hold; a query's plan is kept
    /// inside its statement and re-used while the tables it reads keep their definitions
    /// (see `sql::Statement`).
    pub statements: std::sync::Mutex<StatementCache>,
    /// The sync socket's cut-off switch, exposed only when fault injection is enabled
    /// (`EDGE_NODE_FAULT_INJECTION=1`, for end-to-end partition tests).
    pub fault: Option<FaultSwitch>,
    /// One permit per statement that may run at once (`api.statements_max`); a statement
    /// holds its permit on the blocking pool until it has stopped, not just answered.
    pub statement_slots: Arc<tokio::sync::Semaphore>,
    /// The node-wide memory budget of running statements (`sql.memory_mib`).
    pub memory: MemoryPool,
    /// The interrupts of the statements running now, so that shutdown can stop them.
    pub running: Arc<Running>,
    /// The log compaction driver's settings and figures (`compaction.rs`).
    pub compaction: Arc<crate::compaction::Compaction>,
    /// MQTT ingest's figures, once it has started (when `[mqtt]` is set).
    pub mqtt: std::sync::OnceLock<Arc<crate::mqtt::IngestStatus>>,
}

/// The statements running now, by a number of their own.
#[derive(Debug, Default)]
pub struct Running {
    interrupts: std::sync::Mutex<std::collections::BTreeMap<u64, Interrupt>>,
    next: std::sync::atomic::AtomicU64,
    /// Set by [`Running::interrupt_all`]: no statement starts after it.
    closed: std::sync::atomic::AtomicBool,
}

impl Running {
    /// Registers a statement's interrupt until the returned guard drops; `None` once
    /// shutdown has begun.
    fn register(self: &Arc<Self>, interrupt: &Interrupt) -> Option<Registered> {
        let mut interrupts = self.interrupts.lock().expect("running statements poisoned");
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        interrupts.insert(id, interrupt.clone());
        Some(Registered { running: self.clone(), id })
    }

    /// Interrupts every running statement with `cause` and refuses new ones.
    pub fn interrupt_all(&self, cause: InterruptCause) -> usize {
        let interrupts = self.interrupts.lock().expect("running statements poisoned");
        self.closed.store(true, Ordering::Relaxed);
        for interrupt in interrupts.values() {
            interrupt.interrupt(cause);
        }
        interrupts.len()
    }
}

/// A statement's entry in [`Running`], removed when the statement has stopped.
struct Registered {
    running: Arc<Running>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running.interrupts.lock().expect("running statements poisoned").remove(&self.id);
    }
}

/// Interrupts a statement with [`InterruptCause::ClientGone`] when the handler that waits
/// for it is dropped before the answer: hyper drops it when the client closes the
/// connection, so a client that gives up stops its statement.
struct CancelOnDrop {
    interrupt: Interrupt,
    answered: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.answered {
            self.interrupt.interrupt(InterruptCause::ClientGone);
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds the client should wait before it retries (a `Retry-After` header), for an
    /// answer that says "not now" rather than "never".
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
        ApiError { status, message: message.to_string(), retry_after_s: None }
    }

    fn bad_request(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// `503` with `Retry-After`: the node cannot do it now, but will soon.
    fn unavailable(message: impl std::fmt::Display) -> ApiError {
        ApiError { retry_after_s: Some(RETRY_AFTER_S), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    /// The status of a failed statement (README "HTTP API" lists them).
    fn from_sql(error: SqlError) -> ApiError {
        let status = match &error {
            SqlError::NodeMemoryBudget { .. } | SqlError::Interrupted(InterruptCause::Shutdown) => {
                return ApiError::unavailable(error)
            }
            SqlError::MemoryBudget { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            SqlError::Interrupted(InterruptCause::TimeLimit { .. }) => StatusCode::REQUEST_TIMEOUT,
            SqlError::Storage(storage)
            | SqlError::Write(WriteError::Storage(storage))
            | SqlError::Read(ReadError::Storage(storage)) => {
                return ApiError::from_storage_status(storage, error.to_string())
            }
            SqlError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error)
    }

    /// A storage failure: 507 when the disk is full or below `store.free_bytes_min`, 503
    /// with `Retry-After` while the store is being reopened after an I/O error, 503 once
    /// it has stopped, 500 otherwise (corruption).
    fn from_storage(error: StorageError) -> ApiError {
        let message = error.to_string();
        ApiError::from_storage_status(&error, message)
    }

    fn from_storage_status(error: &StorageError, message: String) -> ApiError {
        let fault = match error {
            StorageError::Unavailable(fault) => Some(fault.clone()),
            StorageError::Stopped => return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
            other => StoreFault::of(other),
        };
        match fault {
            Some(fault) if fault.is_out_of_space() => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, message),
            Some(_) => ApiError::unavailable(message),
            None => ApiError::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

type Answer = Result<Json<JsonValue>, ApiError>;

/// A JSON request body, parsed whatever its `Content-Type` (so `curl -d` works), with an
/// answer that says what is wrong: 400 for bad JSON or an integer outside 64 bits, 413
/// past `api.body_bytes_max` (axum's `DefaultBodyLimit`, set in [`router`]), 408 when
/// the body does not arrive within `api.body_read_timeout_ms`.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Node>> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, node: &Arc<Node>) -> Result<Self, ApiError> {
        let timeout = std::time::Duration::from_millis(node.config.body_read_timeout_ms);
        let bytes = tokio::time::timeout(timeout, axum::body::Bytes::from_request(request, node))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} ms (api.body_read_timeout_ms)",
                        timeout.as_millis()
                    ),
                )
            })?
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than {} bytes (api.body_bytes_max)",
                        node.config.body_bytes_max
                    ),
                ),
                status => ApiError::new(status, format!("reading the request body: {e}")),
            })?;
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not the expected JSON: {e}")))?;
        check_integer_literals(&bytes).map_err(ApiError::bad_request)?;
        Ok(Body(body))
    }
}

/// The router with every route.
pub fn router(node: Arc<Node>) -> Router {
    let protected = Router::new()
        .route("/v1/sql", post(sql_route))
        .route("/v1/status", get(status_route))
        .route("/v1/storage", get(storage_route))
        .route("/v1/peers", get(peers_route).post(add_peer_route))
        .route("/v1/peers/{node_id}", delete(remove_peer_route))
        .route("/v1/check", post(check_route))
        .route("/v1/backup", post(backup_route))
        .route("/v1/history", get(history_route))
        .route("/metrics", get(metrics_route))
        .route_layer(middleware::from_fn_with_state(node.clone(), require_token));
    let mut router = Router::new().route("/v1/health", get(health_route)).merge(protected);
    if node.fault.is_some() {
        router = router
            .route(
                "/v1/debug/fault",
                post(fault_route).route_layer(middleware::from_fn_with_state(node.clone(), require_token)),
            )
            .route(
                "/v1/debug/compact",
                post(compact_route).route_layer(middleware::from_fn_with_state(node.clone(), require_token)),
            );
    }
    router.layer(DefaultBodyLimit::max(node.config.body_bytes_max)).with_state(node)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    /// `true` drops every sync datagram in and out; `false` restores them.
    cut: bool,
}

async fn fault_route(State(node): State<Arc<Node>>, Body(request): Body<FaultRequest>) -> Answer {
    let switch = node.fault.as_ref().ok_or_else(|| ApiError::bad_request("fault injection is disabled"))?;
    if request.cut {
        switch.cut();
    } else {
        switch.heal();
    }
    tracing::warn!(cut = request.cut, "fault injection: sync socket switched");
    Ok(Json(json!({ "cut": request.cut })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactRequest {
    /// Log entries per compaction step.
    entries_per_step: usize,
}

/// Fault injection: compact the log up to the node's own vector, `entries_per_step` per
/// step (safe only for a node alone; the horizon is the real target), for the
/// kill-during-compaction test.
async fn compact_route(State(node): State<Arc<Node>>, Body(request): Body<CompactRequest>) -> Answer {
    if node.fault.is_none() {
        return Err(ApiError::bad_request("fault injection is disabled"));
    }
    if request.entries_per_step == 0 {
        return Err(ApiError::bad_request("entries_per_step must be at least 1"));
    }
    node.compaction.compact_to_vector(request.entries_per_step);
    tracing::warn!(entries_per_step = request.entries_per_step, "fault injection: compacting up to the own vector");
    Ok(Json(json!({ "entries_per_step": request.entries_per_step })))
}

async fn require_token(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let Some(token) = &node.config.api_token else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // blake3's Hash compares in constant time.
    match presented {
        Some(presented) if blake3::hash(presented.as_bytes()) == blake3::hash(token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response(),
    }
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    params: Vec<JsonValue>,
    /// A time limit of the client's own (ms); the node's `api.statement_timeout_ms` still
    /// applies when it is lower.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn sql_route(State(node): State<Arc<Node>>, Body(request): Body<SqlRequest>) -> Answer {
    let params = request
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| from_json(p).map_err(|e| ApiError::bad_request(format!("parameter {}: {e}", i + 1))))
        .collect::<Result<Vec<Value>, _>>()?;
    let Ok(slot) = node.statement_slots.clone().try_acquire_owned() else {
        node.counters.statements_refused.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unavailable(format!(
            "{} statements are running (api.statements_max); retry shortly",
            node.config.statements_max
        )));
    };
    let interrupt = Interrupt::new();
    let registered =
        node.running.register(&interrupt).ok_or_else(|| ApiError::unavailable("the node is shutting down"))?;
    let options = ExecOptions {
        statement_memory_bytes_max: node.config.statement_memory_mib << 20,
        pool: node.memory.clone(),
        interrupt: interrupt.clone(),
    };
    let limit_ms = match (node.config.statement_timeout_ms, request.timeout_ms.filter(|ms| *ms > 0)) {
        (Some(node_ms), Some(client_ms)) => Some(node_ms.min(client_ms)),
        (node_ms, client_ms) => node_ms.or(client_ms),
    };
    let mut cancel = CancelOnDrop { interrupt: interrupt.clone(), answered: false };
    let worker = node.clone();
    let task = blocking(move || {
        worker.counters.statements_running.fetch_add(1, Ordering::Relaxed);
        let answer = run_sql(&worker, &request.sql, &params, &options);
        worker.counters.statements_running.fetch_sub(1, Ordering::Relaxed);
        drop((slot, registered));
        answer
    });
    let result = match limit_ms {
        None => task.await,
        Some(limit_ms) => {
            let mut task = std::pin::pin!(task);
            tokio::select! {
                result = &mut task => result,
                () = tokio::time::sleep(std::time::Duration::from_millis(limit_ms)) => {
                    interrupt.interrupt(InterruptCause::TimeLimit { limit_ms });
                    task.await
                }
            }
        }
    };
    cancel.answered = true;
    if result.is_err() {
        node.counters.sql_errors.fetch_add(1, Ordering::Relaxed);
    }
    result.map(Json)
}

/// The statement for `text`, from the cache or freshly parsed (parse errors are not kept).
fn statement(node: &Node, text: &str) -> Result<sql::Statement, ApiError> {
    let cached = node.statements.lock().expect("statement cache poisoned").get(text);
    if let Some(statement) = cached {
        return Ok(statement);
    }
    let statement = sql::prepare(text).map_err(ApiError::from_sql)?;
    node.statements.lock().expect("statement cache poisoned").put(text, statement.clone());
    Ok(statement)
}

fn run_sql(node: &Node, text: &str, params: &[Value], options: &ExecOptions) -> Result<JsonValue, ApiError> {
    let statement = statement(node, text)?;
    let mut handle = node.handle.clone();
    let result =
        statement.execute_with(&mut handle, params, crate::clock::now_ms(), options).map_err(ApiError::from_sql)?;
    if !statement.is_read_only() {
        node.counters.writes.fetch_add(1, Ordering::Relaxed);
        node.counters.rows_written.fetch_add(result.rows_affected, Ordering::Relaxed);
        node.sync.notify_changed();
        return Ok(json!({ "columns": [], "rows": [], "rows_affected": result.rows_affected }));
    }
    node.counters.queries.fetch_add(1, Ordering::Relaxed);
    let columns = result.columns.clone();
    let mut rows = Vec::new();
    for row in result.rows {
        if rows.len() == node.config.max_result_rows {
            return Err(ApiError::bad_request(format!(
                "the result has more than {} rows (api.max_result_rows); add a LIMIT",
                node.config.max_result_rows
            )));
        }
        let row = row.map_err(ApiError::from_sql)?;
        rows.push(JsonValue::Array(row.iter().map(to_json).collect()));
    }
    Ok(json!({ "columns": columns, "rows": rows, "rows_affected": 0 }))
}

/// `200 {"status": "ok"}` while the store can write; otherwise 503 with what is wrong
/// (`faulted` while it is reopened after an I/O error, `low_disk` below the free-space
/// floor) and `Retry-After`, so that a load balancer or supervisor stops sending writes.
async fn health_route(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let health = health_json(&node.handle.health());
    if health["status"] != "ok" {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(health)).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_S));
        return Ok(response);
    }
    let handle = node.handle.clone();
    blocking(move || handle.call(|_| ()).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))).await?;
    Ok(Json(health).into_response())
}

/// The store's health as JSON: `status` is `ok`, `faulted` or `low_disk`; `error` says
/// why it is not ok.
fn health_json(health: &StoreHealth) -> JsonValue {
    match health {
        StoreHealth::Ok => json!({ "status": "ok" }),
        StoreHealth::Faulted { reason, reopen_attempts } => json!({
            "status": "faulted",
            "error": format!("the store cannot write: {reason}; reopening it ({reopen_attempts} attempts failed so far)"),
            "reopen_attempts": reopen_attempts,
        }),
        StoreHealth::LowDisk { free_bytes, floor_bytes } => json!({
            "status": "low_disk",
            "error": format!("local writes refused: {free_bytes} bytes free, below the floor of {floor_bytes} bytes (store.free_bytes_min)"),
            "free_bytes": free_bytes,
            "floor_bytes": floor_bytes,
        }),
        other => json!({ "status": "unknown", "error": format!("{other:?}") }),
    }
}

/// Runs `f` on the replica's owner thread (call it from the blocking pool); a stopped
/// replica or an error of `f` is a 500. The error comes back typed (`E` crosses the
/// thread), and becomes a message only in the answer.
fn on_owner<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    handle: &ReplicaHandle,
    f: impl FnOnce(&mut edgestore::Replica) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    handle.call(f).map_err(ApiError::internal)?.map_err(ApiError::internal)
}

async fn status_route(State(node): State<Arc<Node>>) -> Answer {
    let handle = node.handle.clone();
    let (now_ms, peer_horizon_ms) = (node.sync.now_ms(), node.config.peer_horizon_ms);
    let store = blocking(move || {
        // The digest reads the maintained digest_v1 from a snapshot: writers are not held up.
        let digest = handle.snapshot().and_then(|s| s.state_digest()).map_err(ApiError::from_storage)?;
        let store = on_owner(&handle, move |replica| {
            let vector = replica.version_vector();
            let tables: Vec<&str> = replica.catalog().live_tables().map(|t| t.schema.name.as_str()).collect();
            let append_tables = replica.append_tables_status()?;
            replica.pending_changes().map(|pending| {
                json!({
                    "append_tables": crate::retention::to_json(&append_tables),
                    "tables": tables,
                    "changes": vector.total_changes(),
                    "origins": vector.len(),
                    "local_changes": vector.seq(replica.node_id()),
                    "pending_changes": pending,
                    "horizon": crate::horizon::to_json(&replica.horizon(now_ms, peer_horizon_ms), vector, now_ms),
                    "log_floor_changes": replica.log_floor().total_changes(),
                })
            })
        })?;
        Ok((store, digest.to_string()))
    })
    .await;
    let mut answer = json!({
        "node_id": node.handle.node_id().to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "cluster": node.config.cluster,
        "data_dir": node.config.data_dir.display().to_string(),
        "sync_addr": node.sync_addr.to_string(),
        "api_addr": node.api_addr.to_string(),
        "uptime_s": node.started.elapsed().as_secs(),
        "store_bytes": store_bytes(&node.config),
        "peers_connected": node.sync.connected_peers().len(),
        "health": health_json(&node.handle.health()),
    });
    // A store that cannot be read now (it is being reopened) leaves its figures out, and
    // the status says why: that is when an operator asks for it.
    match store {
        Ok((store, digest)) => {
            merge(&mut answer, store);
            answer["digest"] = json!(digest);
        }
        Err(error) => answer["store_error"] = json!(error.message),
    }
    if let (Some(status), Some(config)) = (node.mqtt.get(), &node.config.mqtt) {
        answer["mqtt"] = status.json(config);
    }
    Ok(Json(answer))
}

async fn storage_route(State(node): State<Arc<Node>>) -> Answer {
    let handle = node.handle.clone();
    let answer = blocking(move || {
        // A pass over every page of the store: from a snapshot, so writers are not held up.
        let stats = handle.snapshot().and_then(|s| s.storage_stats()).map_err(ApiError::internal)?;
        let caches = handle.call(|replica| replica.cache_figures()).map_err(ApiError::internal)?;
        Ok(crate::storage::to_json(&stats, &caches))
    })
    .await?;
    Ok(Json(answer))
}

fn merge(into: &mut JsonValue, from: JsonValue) {
    if let (Some(into), JsonValue::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn store_bytes(config: &Config) -> u64 {
    std::fs::metadata(crate::data_dir::store_path(&config.data_dir)).map_or(0, |m| m.len())
}

async fn peers_route(State(node): State<Arc<Node>>) -> Answer {
    let peers: Vec<JsonValue> = node
        .sync
        .peer_status()
        .iter()
        .map(|p| {
            json!({
                "node_id": p.node_id.to_string(),
                "addr": p.addr.map(|a| a.to_string()),
                "connected": p.connected,
                "sessions": p.sessions,
                "lag_changes": p.lag_changes,
                "last_contact_ms_ago": p.last_contact_ms_ago,
                "changes_sent": p.totals.changes_sent,
                "changes_received": p.totals.changes_received,
                "bytes_sent": p.totals.bytes_sent,
                "bytes_received": p.totals.bytes_received,
                "transfer_docs_sent": p.totals.transfer_docs_sent,
                "transfer_docs_received": p.totals.transfer_docs_received,
                "transfer": p.transfer.as_ref().map(|t| json!({
                    "role": match t.role {
                        sync_protocol::TransferRole::Donor => "donor",
                        sync_protocol::TransferRole::Receiver => "receiver",
                    },
                    "docs": t.docs,
                    "batches": t.batches,
                })),
                "last_error": p.last_error.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    Ok(Json(json!({ "peers": peers })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerRequest {
    node_id: String,
    addr: String,
}

async fn add_peer_route(State(node): State<Arc<Node>>, Body(request): Body<PeerRequest>) -> Answer {
    let peer = parse_node_id(&request.node_id).map_err(ApiError::bad_request)?;
    let addr: SocketAddr = request
        .addr
        .parse()
        .map_err(|e| ApiError::bad_request(format!("addr {:?}: {e} (expected IP:PORT)", request.addr)))?;
    if peer == node.handle.node_id() {
        return Err(ApiError::bad_request("that is this node's own id"));
    }
    let _guard = node.peers_file.lock().await;
    let mut list = PeerList::load(&node.config.data_dir).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let added = list.upsert(peer, addr);
    list.save(&node.config.data_dir).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    node.sync.add_peer(peer, addr);
    tracing::info!(%peer, %addr, "peer added");
    Ok(Json(json!({ "node_id": peer.to_string(), "addr": addr.to_string(), "added": added })))
}

async fn remove_peer_route(State(node): State<Arc<Node>>, UrlPath(node_id): UrlPath<String>) -> Answer {
    let peer = parse_node_id(&node_id).map_err(ApiError::bad_request)?;
    if node.config.peers.iter().any(|(id, _)| *id == peer) {
        let file = node.config.file.as_ref().map_or("the config file".into(), |f| f.display().to_string());
        return Err(ApiError::bad_request(format!("peer {peer} is configured in {file}; remove it there")));
    }
    let _guard = node.peers_file.lock().await;
    let mut list = PeerList::load(&node.config.data_dir).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let listed = list.remove(peer);
    list.save(&node.config.data_dir).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let known = node.sync.remove_peer(peer);
    if !listed && !known {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no peer {peer}")));
    }
    tracing::info!(%peer, "peer removed");
    Ok(Json(json!({ "node_id": peer.to_string(), "removed": true })))
}

async fn check_route(State(node): State<Arc<Node>>) -> Answer {
    let handle = node.handle.clone();
    let problems = blocking(move || on_owner(&handle, |replica| replica.check_integrity())).await?;
    let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    Ok(Json(json!({ "ok": problems.is_empty(), "problems": problems })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    path: PathBuf,
}

async fn backup_route(State(node): State<Arc<Node>>, Body(request): Body<BackupRequest>) -> Answer {
    if !request.path.is_absolute() {
        return Err(ApiError::bad_request(format!("backup path {} must be absolute", request.path.display())));
    }
    let handle = node.handle.clone();
    let report = blocking(move || {
        let snapshot = handle.snapshot().map_err(ApiError::from_storage)?;
        crate::backup::write_backup(&snapshot, &request.path)
            .map_err(|e| ApiError::bad_request(format!("backing up to {}: {e}", request.path.display())))
    })
    .await?;
    Ok(Json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryRequest {
    table: String,
    /// The primary key: a JSON array of values, one per key column.
    key: String,
}

async fn history_route(State(node): State<Arc<Node>>, Query(request): Query<HistoryRequest>) -> Answer {
    let key: JsonValue = serde_json::from_str(&request.key)
        .map_err(|e| ApiError::bad_request(format!("key {:?} is not a JSON array: {e}", request.key)))?;
    let JsonValue::Array(parts) = key else {
        return Err(ApiError::bad_request("key must be a JSON array of the primary key's values"));
    };
    let key = parts.iter().map(from_json).collect::<Result<Vec<Value>, _>>().map_err(ApiError::bad_request)?;
    let handle = node.handle.clone();
    let answer = blocking(move || {
        let snapshot = handle.snapshot().map_err(ApiError::from_storage)?;
        crate::history::row_history(&snapshot, &request.table, &key).map_err(ApiError::bad_request)
    })
    .await?;
    Ok(Json(answer))
}

async fn metrics_route(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let handle = node.handle.clone();
    // A faulted store cannot be read; its health figures still say what is wrong.
    let health = metrics::StoreHealthFigures::of(&node.handle);
    let (now_ms, peer_horizon_ms) = (node.sync.now_ms(), node.config.peer_horizon_ms);
    let mut figures = match blocking(move || store_figures(&handle, now_ms, peer_horizon_ms)).await {
        Err(_) if !health.healthy => StoreFigures::default(),
        figures => figures?,
    };
    figures.store_bytes = store_bytes(&node.config);
    figures.health = health;
    figures.compaction = metrics::CompactionFigures::of(&node.compaction);
    figures.mqtt = node.mqtt.get().map(|status| metrics::MqttFigures::of(status));
    let text = metrics::render(
        &node.counters,
        &figures,
        &node.sync.peer_status(),
        &node.sync.counters(),
        node.started.elapsed().as_secs(),
    );
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

fn store_figures(handle: &ReplicaHandle, now_ms: u64, peer_horizon_ms: u64) -> Result<StoreFigures, ApiError> {
    let snapshot = Arc::new(handle.snapshot().map_err(ApiError::internal)?);
    let conflicts = sql::query(snapshot, "SELECT COUNT(*) FROM edgestore_conflicts WHERE is_winner", &[])
        .and_then(|r| r.collect_rows())
        .map_err(ApiError::from_sql)?;
    let conflicts = match conflicts.first().and_then(|row| row.first()) {
        Some(Value::Integer(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let table_entries = handle.snapshot().and_then(|s| s.table_entries()).map_err(ApiError::internal)?;
    on_owner(handle, move |replica| {
        let vector = replica.version_vector();
        let mut horizon = metrics::HorizonFigures::of(&replica.horizon(now_ms, peer_horizon_ms), vector);
        horizon.counters = replica.holders_counters();
        let append_tables = replica.append_tables_status()?;
        replica.pending_changes().map(|pending_changes| StoreFigures {
            horizon,
            local_changes: vector.seq(replica.node_id()),
            changes: vector.total_changes(),
            log_floor_changes: replica.log_floor().total_changes(),
            pending_changes,
            conflicts,
            table_entries,
            caches: Some(replica.cache_figures()),
            append_tables,
            ..StoreFigures::default()
        })
    })
}
