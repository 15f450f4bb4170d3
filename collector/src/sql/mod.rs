//! Read-only SQL over the collector's tables, with DataFusion.
//!
//! Every query runs on threads of its own ([`SqlLimits::threads`], by default one per core),
//! never on the runtime that serves ingest and the web server; its scans are split into as
//! many partitions, so an aggregate over millions of spans uses every core (one thread per
//! query keeps a query to one core). Before anything runs:
//! exactly one statement, and it must be a query (`SELECT`, `WITH`, `VALUES`,
//! `EXPLAIN`); only our tables (and `information_schema`) can be named; functions that
//! can build unbounded values are refused, and so are queries with more than
//! [`guard::MAX_OPERATORS`] operators ([`guard`]). While it runs: a time limit (the
//! query is cancelled), a memory limit for its operators (no spilling to disk), and a
//! row limit on what is returned (the rest is cut, and the answer says so).

pub mod coop;
pub mod format;
pub mod guard;
pub mod snapshot;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use datafusion::{
    arrow::record_batch::RecordBatch,
    catalog::{MemTable, TableProvider},
    config::Dialect,
    error::DataFusionError,
    execution::{
        disk_manager::{DiskManagerBuilder, DiskManagerMode},
        runtime_env::RuntimeEnvBuilder,
        session_state::SessionStateBuilder,
    },
    prelude::{SessionConfig, SessionContext},
};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    pipeline::Pipeline,
    tables::{Sealed, edges, schema},
};

/// The stack of each thread a query runs on. DataFusion walks and clones expression trees
/// recursively; with the 2 MiB threads get by default, a query of a few thousand chained
/// operators aborted the collector. The memory is reserved, not used, until a deep tree
/// needs it.
pub const QUERY_STACK: usize = 64 << 20;

/// Bounds on every query.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Longest a query may run.
    pub timeout: Duration,
    /// Memory its operators may reserve (sorts, joins, aggregations).
    pub memory_bytes: usize,
    /// Most rows returned.
    pub max_rows: usize,
    /// Queries running at once.
    pub concurrency: usize,
    /// Queries that may wait for a running one to finish (at most their own time limit);
    /// more are refused as busy.
    pub queued: usize,
    /// Threads one query runs on; its table scans are split into as many partitions.
    pub threads: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), memory_bytes: 256 << 20, max_rows: 10_000, concurrency: 2, queued: 16, threads: cores() }
    }
}

/// The cores this process may run on (one when that cannot be told).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The query is not allowed or not valid; the message says why.
    #[error("{0}")]
    Rejected(String),
    /// It ran past its time limit and was cancelled.
    #[error("query cancelled: it ran longer than the {0:?} limit")]
    Timeout(Duration),
    /// It needed more memory than its limit.
    #[error("query stopped: {0}")]
    Memory(String),
    /// Too many queries are running.
    #[error("too many SQL queries are running; retry shortly")]
    Busy,
    /// Something failed inside the collector.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DataFusionError> for SqlError {
    fn from(error: DataFusionError) -> Self {
        let message = error.message().to_string();
        match error.find_root() {
            DataFusionError::ResourcesExhausted(m) => Self::Memory(m.clone()),
            DataFusionError::Internal(m) => Self::Internal(m.clone()),
            DataFusionError::IoError(e) => Self::Internal(e.to_string()),
            _ => Self::Rejected(message),
        }
    }
}

/// A query's answer.
#[derive(Debug)]
pub struct QueryResult {
    /// The result batches (at most `max_rows` rows in all).
    pub batches: Vec<RecordBatch>,
    /// The result schema.
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// Rows returned.
    pub rows: usize,
    /// Whether rows past the limit were cut.
    pub truncated: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// Runs queries within [`SqlLimits`].
#[derive(Debug)]
pub struct SqlEngine {
    limits: SqlLimits,
    running: Arc<Semaphore>,
    /// Queries waiting for a slot.
    waiting: AtomicUsize,
}

/// The tables a query may name.
pub const TABLE_NAMES: [&str; 4] = ["spans", "logs", "edges", "services"];

impl SqlEngine {
    /// An engine with these limits.
    pub fn new(limits: SqlLimits) -> Self {
        Self { limits, running: Arc::new(Semaphore::new(limits.concurrency.max(1))), waiting: AtomicUsize::new(0) }
    }

    /// The limits.
    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    /// Runs `sql` against `pipeline`'s tables.
    pub async fn run(&self, pipeline: Arc<Pipeline>, sql: String) -> Result<QueryResult, SqlError> {
        let permit = self.slot().await?;
        let limits = self.limits;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("meshlens-sql".into())
            .stack_size(QUERY_STACK)
            .spawn(move || {
                let runtime = match limits.threads {
                    0 | 1 => tokio::runtime::Builder::new_current_thread().enable_time().build(),
                    n => tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(n)
                        .thread_name("meshlens-sql")
                        .thread_stack_size(QUERY_STACK)
                        .enable_time()
                        .build(),
                };
                let result = match runtime {
                    Ok(rt) => rt.block_on(async move {
                        // The query is its own task: when the limit passes it is aborted at
                        // its next yield, which DataFusion's operators make every batch.
                        let mut task = tokio::spawn(async move { execute(&pipeline, &sql, limits).await });
                        tokio::select! {
                            joined = &mut task => joined.unwrap_or_else(|e| Err(SqlError::Internal(format!("the query task failed: {e}")))),
                            () = tokio::time::sleep(limits.timeout) => {
                                task.abort();
                                Err(SqlError::Timeout(limits.timeout))
                            }
                        }
                    }),
                    Err(e) => Err(SqlError::Internal(format!("cannot start the query runtime: {e}"))),
                };
                drop(permit);
                let _ = tx.send(result);
            })
            .map_err(|e| SqlError::Internal(format!("cannot start a query thread: {e}")))?;
        // The query thread enforces the limit; this only guards against a stuck thread.
        match tokio::time::timeout(limits.timeout + Duration::from_secs(2), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SqlError::Internal("the query thread ended without an answer".into())),
            Err(_) => Err(SqlError::Timeout(limits.timeout)),
        }
    }

    /// A running slot: at once when one is free, else after a wait in the bounded queue.
    /// A dashboard panel sends a few queries together, and the queue spares them a refusal.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, SqlError> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // The place in the queue is given back however the wait ends, also when the caller
        // stops waiting (a client that hangs up drops its request's future).
        let place = QueuePlace(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.limits.queued {
            return Err(SqlError::Busy);
        }
        let waited = tokio::time::timeout(self.limits.timeout, self.running.clone().acquire_owned()).await;
        drop(place);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a wait past the limit is the same answer.
            _ => Err(SqlError::Busy),
        }
    }
}

/// A query's place in the wait queue, counted in `SqlEngine::waiting` while it lives.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn context(limits: SqlLimits) -> Result<SessionContext, SqlError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()?;
    let config = SessionConfig::new()
        .with_target_partitions(limits.threads.max(1))
        // Four sealed parts per batch: aggregates that merge state per batch and group
        // (`approx_percentile_cont`'s t-digests) do it a quarter as often; the p99-per-edge
        // aggregate over 3M spans took 112-129 ms instead of 142-208 (`bench ingest`).
        .with_batch_size(32_768)
        .with_information_schema(true)
        .with_default_catalog_and_schema("meshlens", "public");
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(coop::YieldEverywhere))
        .build();
    Ok(SessionContext::new_with_state(state))
}

async fn execute(pipeline: &Pipeline, sql: &str, limits: SqlLimits) -> Result<QueryResult, SqlError> {
    let started = Instant::now();
    guard::bounded(sql)?;
    let ctx = context(limits)?;
    let state = ctx.state();
    let statement = state.sql_to_statement(sql, &Dialect::Generic)?;
    guard::only_queries(&statement)?;
    // Only the tables the query names are loaded; the others are there empty, so
    // `information_schema` still shows every table.
    let named = guard::tables(&state.resolve_table_references(&statement)?)?;
    for name in TABLE_NAMES {
        let table: Arc<dyn TableProvider> = match snapshot(pipeline, name, named.contains(&name))? {
            Snapshot::Parts(parts) => Arc::new(snapshot::SnapshotTable::new(table_columns(name), parts)),
            Snapshot::Batches(batches) => Arc::new(MemTable::try_new(table_schema(name), vec![batches])?),
        };
        ctx.register_table(name, table)?;
    }
    let plan = state.statement_to_plan(statement).await?;
    guard::plan(&plan)?;
    let frame = ctx.execute_logical_plan(plan).await?;
    let mut stream = frame.execute_stream().await?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    let mut rows = 0;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let room = limits.max_rows - rows;
        if batch.num_rows() > room {
            batches.push(batch.slice(0, room));
            rows += room;
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    Ok(QueryResult { batches, schema, rows, truncated, elapsed: started.elapsed() })
}

fn table_columns(name: &str) -> &'static [schema::Column] {
    schema::TABLES.iter().find(|(n, _, _)| *n == name).map_or(&[][..], |(_, _, c)| c)
}

fn table_schema(name: &str) -> datafusion::arrow::datatypes::SchemaRef {
    schema::schema(table_columns(name))
}

fn poisoned<T>(_: T) -> SqlError {
    SqlError::Internal("store lock poisoned".into())
}

/// The rows of one table a query reads.
enum Snapshot {
    /// The appended tables' batches, unpacked as the query reads them.
    Parts(Vec<Sealed>),
    /// A table built for the query.
    Batches(Vec<RecordBatch>),
}

/// The current rows of one table (none when the query does not name it).
fn snapshot(pipeline: &Pipeline, name: &str, named: bool) -> Result<Snapshot, SqlError> {
    if !named {
        return Ok(Snapshot::Batches(Vec::new()));
    }
    let built = match name {
        "spans" | "logs" => {
            let tables = pipeline.tables.read().map_err(poisoned)?;
            return Ok(Snapshot::Parts(tables.snapshot(name).unwrap_or_default()));
        }
        "edges" => {
            let topology = pipeline.topology.read().map_err(poisoned)?;
            edges::edges_batch(topology.rollups().buckets())
        }
        _ => {
            let operations = pipeline.tables.read().map_err(poisoned)?.spans.operation_counts();
            let topology = pipeline.topology.read().map_err(poisoned)?;
            edges::services_batch(topology.rollups().buckets(), &operations)
        }
    };
    built.map(|b| Snapshot::Batches(vec![b])).map_err(|e| SqlError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::CollectorConfig,
        ingest::convert::Converted,
        model::{SpanKind, Value},
        pipeline::Transport,
        tables::traces::tests::span,
    };

    fn pipeline_with_spans(n: u8, limits: SqlLimits) -> Arc<Pipeline> {
        let config = CollectorConfig { sql: limits, ..Default::default() };
        let pipeline = Pipeline::new(&config);
        let items = (1..=n)
            .map(|i| {
                let mut s = (*span(i, i, None, if i % 2 == 0 { "even" } else { "odd" }, SpanKind::Server, 1_000 + u64::from(i), u64::from(i))).clone();
                s.attributes.push(("http.route".into(), Value::Str("/items/{id}".into())));
                s
            })
            .collect();
        pipeline.ingest_spans(Converted { items, rejected: 0, reasons: vec![], truncated: 0 }, Transport::Grpc, crate::pipeline::Record::Unjournaled);
        pipeline
    }

    async fn query(pipeline: &Arc<Pipeline>, sql: &str) -> Result<QueryResult, SqlError> {
        pipeline.sql.run(pipeline.clone(), sql.to_owned()).await
    }

    #[tokio::test]
    async fn aggregates_over_spans() {
        let p = pipeline_with_spans(10, SqlLimits::default());
        let r = query(&p, "SELECT service, count(*) AS n, max(duration_ns) AS slowest FROM spans GROUP BY service ORDER BY service")
            .await
            .expect("query");
        let doc = format::to_json(&r).expect("json");
        assert_eq!(doc["rows"], serde_json::json!([["even", 5, 10_000_000], ["odd", 5, 9_000_000]]), "{doc}");
        assert_eq!(doc["columns"][0]["name"], "service");
        let r = query(&p, "SELECT http_route, trace_id FROM spans WHERE http_route = '/items/{id}' LIMIT 1").await.expect("query");
        assert_eq!(format::to_csv(&r).expect("csv"), format!("http_route,trace_id\r\n/items/{{id}},{}\r\n", "01".repeat(16)));
        let r = query(&p, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").await.expect("query");
        assert_eq!(r.rows, 4, "every table is listed");
        let r = query(&p, "SELECT count(*) FROM edges").await.expect("edges table");
        assert_eq!(r.rows, 1);
        let r = query(&p, "SELECT service, operations FROM services WHERE kind = 'service' ORDER BY service").await.expect("services table");
        assert_eq!(format::to_json(&r).expect("json")["rows"], serde_json::json!([["even", 5], ["odd", 5]]));
    }

    #[tokio::test]
    async fn anything_but_a_query_is_rejected_with_a_reason() {
        let p = pipeline_with_spans(3, SqlLimits::default());
        for (sql, expect) in [
            ("DROP TABLE spans", "DROP TABLE"),
            ("CREATE TABLE x AS SELECT 1", "CREATE TABLE"),
            ("INSERT INTO spans SELECT * FROM spans", "INSERT INTO"),
            ("DELETE FROM spans", "DELETE FROM"),
            ("COPY spans TO '/tmp/out.csv'", "COPY"),
            ("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'", "CREATE EXTERNAL TABLE"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("SELECT * FROM '/etc/passwd'", "unknown table"),
            ("SELECT * FROM secrets", "unknown table 'secrets'"),
            ("SELECT * FROM generate_series(1, 100000000000)", "unknown table"),
            ("SELECT repeat('x', 2000000000)", "repeat() is disabled"),
            ("SELECT 1; SELECT 2", "single SQL statement"),
            ("SELEC 1", "Expected"),
            ("SELECT nope FROM spans", "nope"),
        ] {
            match query(&p, sql).await {
                Err(SqlError::Rejected(message)) => assert!(message.contains(expect), "{sql}: {message}"),
                other => panic!("{sql}: expected a rejection, got {other:?}"),
            }
        }
        let r = query(&p, "EXPLAIN SELECT count(*) FROM spans").await.expect("EXPLAIN is read-only");
        assert!(r.rows > 0);
    }

    #[tokio::test]
    async fn a_query_as_deep_as_allowed_runs_and_a_deeper_one_is_refused() {
        let p = pipeline_with_spans(3, SqlLimits::default());
        // Chains of single-token operators: each is a level of the expression tree.
        let chain = |n: usize, op: &str| format!("SELECT count(*) FROM spans WHERE duration_ns >= 0{}", format!(" {op} 0").repeat(n));
        let r = query(&p, &chain(guard::MAX_OPERATORS - 9, "+")).await.expect("a tree as deep as the limit allows");
        assert_eq!(format::to_json(&r).expect("json")["rows"], serde_json::json!([[3]]));
        // In the select list, where a chain of 2,000 aborted the collector.
        let r = query(&p, &format!("SELECT 0{}", " + 0".repeat(guard::MAX_OPERATORS - 1))).await.expect("as deep, selected");
        assert_eq!(r.rows, 1);
        for too_deep in [chain(guard::MAX_OPERATORS, "+"), chain(20_000, "OR duration_ns ="), chain(20_000, "::BIGINT")] {
            match query(&p, &too_deep).await {
                Err(SqlError::Rejected(message)) => assert!(message.contains("too large"), "{message}"),
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
        // Lists are flat, and as long as they need to be.
        let ids = (0..20_000).map(|i| format!("'{i:032x}'")).collect::<Vec<_>>().join(", ");
        let r = query(&p, &format!("SELECT count(*) FROM spans WHERE trace_id IN ({ids})")).await.expect("a long IN list");
        assert_eq!(format::to_json(&r).expect("json")["rows"], serde_json::json!([[0]]));
    }

    #[tokio::test]
    async fn sealed_batches_read_back_their_packed_columns() {
        let p = pipeline_with_spans(0, SqlLimits::default());
        let items: Vec<_> = (0..crate::tables::columnar::SEAL_ROWS + 10)
            .map(|i| {
                let mut s = (*span((i % 200) as u8, (i % 250) as u8 + 1, Some(9), "svc", SpanKind::Client, 1_000, 1)).clone();
                s.attributes.push(("row".into(), Value::Int(i as i64)));
                if i % 3 == 0 {
                    s.status_message = format!("failed <{i}>");
                }
                s
            })
            .collect();
        p.ingest_spans(Converted { items, rejected: 0, reasons: vec![], truncated: 0 }, Transport::Grpc, crate::pipeline::Record::Unjournaled);
        assert!(p.tables.read().expect("lock").spans.table().sealed().count() == 1, "one batch sealed, some rows open");
        let sql = "SELECT count(*), count(status_message), min(trace_id), max(parent_span_id), \
                   sum(CAST(json_row AS BIGINT)) FROM (SELECT *, regexp_replace(attributes, '.*\"row\":([0-9]+).*', '\\1') AS json_row FROM spans)";
        let r = query(&p, sql).await.expect("query");
        let doc = format::to_json(&r).expect("json");
        let n = crate::tables::columnar::SEAL_ROWS + 10;
        let expected = serde_json::json!([[n, n.div_ceil(3), "00".repeat(16), "09".repeat(8), n * (n - 1) / 2]]);
        assert_eq!(doc["rows"], expected, "{doc}");
        let r = query(&p, &format!("SELECT count(*) FROM spans WHERE trace_id = '{}'", "07".repeat(16))).await.expect("query");
        assert_eq!(format::to_json(&r).expect("json")["rows"], serde_json::json!([[(0..n).filter(|i| i % 200 == 7).count()]]));
        // Only dictionary and plain columns: the stored arrays are shared as they are, the
        // sealed batch's 16-bit dictionary keys widened, the open rows' 32-bit ones not.
        let r = query(&p, "SELECT service, kind, count(*), sum(duration_ns) FROM spans WHERE kind = 'client' GROUP BY service, kind")
            .await
            .expect("query");
        // Every span lasts 1 ms.
        assert_eq!(format::to_json(&r).expect("json")["rows"], serde_json::json!([["svc", "client", n, n * 1_000_000]]));
    }

    #[tokio::test]
    async fn runaway_queries_are_stopped_by_their_limits() {
        let limits = SqlLimits { timeout: Duration::from_millis(500), max_rows: 7, memory_bytes: 1 << 20, concurrency: 1, queued: 1, threads: 2 };
        let p = pipeline_with_spans(200, limits);
        let r = query(&p, "SELECT a.span_id FROM spans a, spans b").await.expect("row limit cuts");
        assert_eq!((r.rows, r.truncated), (7, true));
        // The time limit, with room enough in memory for the joins' batches.
        let roomy = pipeline_with_spans(200, SqlLimits { memory_bytes: 64 << 20, ..limits });
        let started = Instant::now();
        let e = query(&roomy, "SELECT count(*) FROM spans a, spans b, spans c, spans d, spans e WHERE a.duration_ns + b.duration_ns + c.duration_ns + d.duration_ns + e.duration_ns < 0")
            .await
            .expect_err("2e11 rows cannot finish");
        assert!(matches!(e, SqlError::Timeout(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "cancelled promptly: {:?}", started.elapsed());
        let e = query(&p, "SELECT a.span_id || b.span_id || c.span_id AS k FROM spans a, spans b, spans c ORDER BY k")
            .await
            .expect_err("sorting 8 million rows needs more than 1 MiB");
        assert!(matches!(e, SqlError::Memory(_)), "{e:?}");
        assert!(query(&p, "SELECT count(*) FROM spans").await.is_ok(), "the engine still answers");
    }

    #[tokio::test]
    async fn queries_beyond_the_running_ones_wait_in_a_bounded_queue() {
        let limits = SqlLimits { timeout: Duration::from_secs(5), concurrency: 1, queued: 2, ..SqlLimits::default() };
        let p = pipeline_with_spans(20, limits);
        // The only slot is taken: two queries wait for it, a third is refused at once.
        let held = p.sql.slot().await.expect("a free slot");
        let (first, second) = (tokio::spawn(query_owned(p.clone())), tokio::spawn(query_owned(p.clone())));
        queued(&p, 2).await;
        assert!(matches!(query(&p, "SELECT 1").await, Err(SqlError::Busy)), "the queue is full");
        assert_eq!(p.sql.waiting.load(Ordering::Relaxed), 2, "a refused query takes no place");
        // A caller that stops waiting (a client that hung up) gives its place back.
        second.abort();
        assert!(second.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(p.sql.waiting.load(Ordering::Relaxed), 1, "an abandoned wait gives its place back");
        let third = tokio::spawn(query_owned(p.clone()));
        queued(&p, 2).await;
        drop(held);
        for w in [first, third] {
            let r = w.await.expect("join").expect("a queued query runs once the slot is free");
            assert_eq!(format::to_json(&r).expect("json")["rows"], serde_json::json!([[20]]));
        }
        assert_eq!(p.sql.waiting.load(Ordering::Relaxed), 0);
        // A wait longer than the query's time limit ends as busy, not as a hang.
        let short = pipeline_with_spans(1, SqlLimits { timeout: Duration::from_millis(200), ..limits });
        let _held = short.sql.slot().await.expect("a free slot");
        assert!(matches!(query(&short, "SELECT 1").await, Err(SqlError::Busy)), "waited past the limit");
    }

    /// Returns once `n` queries wait for a slot (fails the test after 5 s).
    async fn queued(p: &Pipeline, n: usize) {
        let until = async {
            while p.sql.waiting.load(Ordering::Relaxed) < n {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), until).await.expect("the queries wait for the slot");
    }

    async fn query_owned(p: Arc<Pipeline>) -> Result<QueryResult, SqlError> {
        query(&p, "SELECT count(*) FROM spans").await
    }
}
