//! The `tributary` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use tributary::config;
use tributary::runtime::{self, RunSummary};
use tributary::source::RunMode;

/// Change data and event streams into Delta Lake tables, exactly once.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: continuously (stop with SIGINT/SIGTERM) or, with --once, up to
    /// the input available at start.
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Process what is available now, commit, and exit 0.
        #[arg(long)]
        once: bool,
        /// Serve Prometheus /metrics and /health here (overrides `[runtime] metrics`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Show each table's version, last commit and progress, and how far behind the
    /// source every shard is (Kafka offsets, Postgres WAL bytes). Reads only.
    Status {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compact small files, write a checkpoint and vacuum unreferenced files (orphans of
    /// crashed commits included) in every table of a pipeline. Safe while it runs.
    Maintain {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Keep files that versions younger than this still need ("7d", "12h", "0s").
        /// Shorter than the longest commit can delete a running writer's new files.
        #[arg(long, default_value = "7d", value_parser = config::values::parse_span)]
        retention: config::Span,
    },
    /// Copy Postgres tables again, in chunks, while changes stream (an incremental
    /// snapshot), then run the pipeline once: a mirror ends equal to the source table,
    /// rows it holds that the source no longer has included. Other tables fed by the
    /// same source table keep their rows.
    Snapshot {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// A `[[tables]]` name to snapshot again (repeatable).
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
    },
    /// Recompute an aggregate from the table holding its raw stream (the cold path)
    /// into a table of its own, with the operator the streaming run uses.
    Backfill {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The aggregate to recompute.
        #[arg(long)]
        aggregate: String,
        /// The table to read (default: the pipeline's append or changelog table of the
        /// aggregate's stream).
        #[arg(long)]
        from: Option<String>,
        /// The table to write, replacing its rows (default: `{aggregate}_backfill`).
        #[arg(long)]
        into: Option<String>,
    },
    /// Serve a Confluent-compatible schema registry (Avro) over HTTP or HTTPS.
    Registry {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: std::net::SocketAddr,
        /// Where schemas are kept: a folder, file://… or s3://bucket/prefix (AWS_* variables
        /// configure S3).
        #[arg(long)]
        store: String,
        /// Write a snapshot of the store every N events, so a start reads the snapshot
        /// and the events after it.
        #[arg(long, default_value_t = tributary::registry::DEFAULT_COMPACT_EVERY)]
        compact_every: u64,
        /// Users and roles (TOML, password hashes from `tributary hash-password`):
        /// requests then need HTTP basic auth.
        #[arg(long, env = "TRIBUTARY_REGISTRY_USERS")]
        users: Option<PathBuf>,
        /// Certificate chain (PEM) for https; needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) for https; needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Hash a registry user's password (read from stdin) for a --users file.
    HashPassword {
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = tributary::registry::auth::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// Check a pipeline file and print what it resolves to.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Print each aggregate as the engine will run it (window, keys, measures,
    /// watermark, emit, late policy, output table) and its TOML form, for SQL and TOML
    /// aggregates alike.
    Explain {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
}

/// Dependencies' routine chatter is hidden by default; the delta kernel logs an ERROR
/// for every table that does not exist yet, which is normal on a first run, and MERGE
/// warns on every commit about a file metric it derives itself.
const DEFAULT_LOG_FILTER: &str = "info,deltalake_core=warn,deltalake_core::operations::merge=error,datafusion=warn,buoyant_kernel=off,delta_kernel=warn";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIBUTARY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only for a terminal: files, pipes and journald get plain `key=value`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Loads a pipeline file, or says why not (exit status 2).
fn load(pipeline: &std::path::Path) -> Result<config::Pipeline, ExitCode> {
    config::load(pipeline).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// Prints an error with its chain of causes on one line.
fn report_error(e: &dyn std::error::Error) {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    eprintln!("error: {msg}");
}

fn print_summary(summary: &RunSummary, elapsed: std::time::Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "read {} records in {} micro-batches in {:.2}s ({:.0} records/s)",
        summary.records_read,
        summary.micro_batches,
        secs,
        summary.records_read as f64 / secs
    );
    for t in &summary.tables {
        let version = t.version.map_or("-".to_string(), |v| v.to_string());
        print!(
            "  {:<24} +{} rows in {} commits (version {version})",
            t.name, t.rows_written, t.commits
        );
        if t.skipped_commits > 0 || t.skipped_records > 0 {
            print!(
                ", {} commits and {} records already there",
                t.skipped_commits, t.skipped_records
            );
        }
        if let Some(w) = t.watermark
            && let Some(at) = chrono::DateTime::from_timestamp_micros(w)
        {
            print!(", watermark {}", at.format("%Y-%m-%dT%H:%M:%S%.fZ"));
        }
        if let Some(s) = &t.snapshot {
            print!(", snapshot {s}");
        }
        if let Some(s) = t.stats {
            for (n, what) in [
                (s.late_dropped, "late dropped"),
                (s.late_dead_lettered, "late set aside"),
                (s.late_corrected, "late corrected"),
                (s.no_event_time, "without event time"),
            ] {
                if n > 0 {
                    print!(", {n} {what}");
                }
            }
        }
        println!();
    }
}

/// Starts the `/metrics` and `/health` endpoint; stop it with the sender.
async fn serve_metrics(
    addr: std::net::SocketAddr,
) -> Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>), String> {
    let handle = tributary::telemetry::install()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics and /health");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = tributary::telemetry::serve(listener, handle, shutdown).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok((stop, task))
}

/// A run's summary and exit code.
fn finish_run(outcome: Result<runtime::RunSummary, runtime::RunError>, started: Instant) -> ExitCode {
    match outcome {
        Ok(summary) => {
            print_summary(&summary, started.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

fn print_status(status: &runtime::Status) {
    println!("pipeline {}", status.pipeline);
    println!(
        "{:<28} {:>8}  {:<24}  committed",
        "table", "version", "last commit"
    );
    for t in &status.tables {
        let version = t.version.map_or("-".to_string(), |v| v.to_string());
        let committed = if t.version.is_none() {
            "no table yet".to_string()
        } else {
            t.committed
                .iter()
                .map(|(s, p)| format!("{s}@{p}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<28} {:>8}  {:<24}  {committed}",
            t.name,
            version,
            t.last_commit.as_deref().unwrap_or("-")
        );
        if let Some(s) = &t.snapshot {
            println!("{:<28} snapshot {s}", "");
        }
    }
    println!();
    println!(
        "{:<28} {:>16} {:>16} {:>12}  unit",
        "shard", "committed", "end", "lag"
    );
    let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    for s in &status.shards {
        let committed = s.committed_text.clone().unwrap_or_else(|| show(s.committed));
        println!(
            "{:<28} {:>16} {:>16} {:>12}  {}",
            s.shard,
            committed,
            show(s.end),
            show(s.lag),
            s.unit
        );
        if let Some(c) = &s.slot_confirmed {
            println!("{:<28} slot confirmed at {c}", "");
        }
    }
    if let Some(e) = &status.source_error {
        println!();
        println!("source not reachable: {e}");
    }
}

fn main() -> ExitCode {
    // Before the runtime starts any thread (see the module).
    let tuning = runtime::malloc::tune();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(tuning))
}

async fn run(tuning: runtime::malloc::Tuning) -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    tracing::debug!(?tuning, "allocator");
    match cli.command {
        Command::HashPassword { iterations } => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("error: reading the password from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("error: no password on stdin");
                return ExitCode::FAILURE;
            }
            match tributary::registry::auth::hash_password(password, iterations) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Registry {
            listen,
            store,
            compact_every,
            users,
            tls_cert,
            tls_key,
        } => {
            let settings = tributary::registry::Settings {
                listen,
                store,
                compact_every,
                users,
                tls: tls_cert.zip(tls_key),
            };
            match tributary::registry::serve(settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain { pipeline } => match config::load(&pipeline) {
            Ok(p) => {
                if p.aggregates.is_empty() {
                    println!("{}: no aggregates", pipeline.display());
                }
                for (i, a) in p.aggregates.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    print!("{}", config::explain::aggregate(&p, a));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Validate { pipeline } => match config::load(&pipeline) {
            Ok(p) => {
                println!("{}: ok", pipeline.display());
                match p.source.streams() {
                    Some(s) => println!("  pipeline {} reading {}", p.name, s.join(", ")),
                    None => println!("  pipeline {} reading every table of its publication", p.name),
                }
                for t in &p.tables {
                    println!(
                        "  table     {} ← {} ({:?})",
                        p.sink.table_url(&t.name),
                        t.from,
                        t.mode
                    );
                }
                for a in &p.aggregates {
                    println!(
                        "  aggregate {} ← {} ({:?})",
                        p.sink.table_url(&a.name),
                        a.from,
                        a.window
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            pipeline,
            once,
            metrics,
        } => {
            let p = match load(&pipeline) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let mode = if once { RunMode::Once } else { RunMode::Continuous };
            let server = match metrics.or(p.runtime.metrics) {
                Some(addr) => match serve_metrics(addr).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("error: runtime.metrics: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => None,
            };
            let started = Instant::now();
            let outcome = runtime::run(&p, mode, shutdown_signal()).await;
            if let Some((stop, task)) = server {
                let _ = stop.send(());
                let _ = task.await;
            }
            finish_run(outcome, started)
        }
        Command::Snapshot { pipeline, tables } => {
            let p = match load(&pipeline) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match runtime::take_again(&p, &tables).await {
                Ok(marked) => {
                    for m in marked {
                        println!("  {m}");
                    }
                }
                Err(e) => {
                    report_error(&e);
                    return ExitCode::FAILURE;
                }
            }
            let started = Instant::now();
            finish_run(runtime::run(&p, RunMode::Once, shutdown_signal()).await, started)
        }
        Command::Status { pipeline, json } => {
            let p = match load(&pipeline) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match runtime::status(&p).await {
                Ok(status) if json => match serde_json::to_string_pretty(&status) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(status) => {
                    print_status(&status);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report_error(&e);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backfill {
            pipeline,
            aggregate,
            from,
            into,
        } => {
            let p = match load(&pipeline) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match runtime::backfill(&p, &aggregate, from.as_deref(), into.as_deref()).await {
                Ok(r) => {
                    println!(
                        "backfilled {} from {}: read {} rows, wrote {} rows to {} (version {})",
                        aggregate,
                        r.from,
                        r.rows_read,
                        r.rows_written,
                        r.into,
                        r.version.map_or("-".into(), |v| v.to_string())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report_error(&e);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Maintain { pipeline, retention } => {
            let p = match load(&pipeline) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match runtime::maintain(&p, retention.0).await {
                Ok(reports) => {
                    for r in reports {
                        if !r.exists {
                            println!("  {:<24} no table yet", r.table);
                            continue;
                        }
                        println!(
                            "  {:<24} files {} -> {} ({} purged of {} deleted rows, {} compacted, {} vacuumed, {} old states removed), version {}",
                            r.table,
                            r.files_before,
                            r.files_after,
                            r.files_purged,
                            r.rows_purged,
                            r.files_compacted,
                            r.files_vacuumed,
                            r.states_removed,
                            r.version.map_or("-".into(), |v| v.to_string())
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    report_error(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
