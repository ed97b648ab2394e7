//! The one retry policy: transient failures are retried with exponential backoff,
//! commit conflicts (contention between writers) promptly, everything else stops the
//! pipeline with its cause.

use std::future::Future;
use std::time::Duration;

/// Errors say whether trying again may help; this is the only place that acts on it.
pub trait Retryable: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Retryable for crate::sink::SinkError {
    fn is_transient(&self) -> bool {
        crate::sink::SinkError::is_transient(self)
    }
}

/// Commit conflicts in a row retried promptly (see [`RetryPolicy::after_conflict`]).
const CONFLICT_RETRIES: u32 = 50;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Starting a whole run over after a transient failure (a lost Postgres
    /// connection, S3 failing past the per-commit retries): longer waits, since what
    /// failed is a server that needs time to come back. A service waits minutes for
    /// it; a scheduled `--once` job seconds, so that its scheduler hears of it.
    pub fn restarts(mode: crate::source::RunMode) -> Self {
        match mode {
            crate::source::RunMode::Continuous => Self {
                attempts: 10,
                first_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
            },
            crate::source::RunMode::Once => Self {
                attempts: 3,
                first_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(5),
            },
        }
    }

    /// How long to wait before attempt `attempt + 1` after `err`, or `None` to give up.
    /// The single place that decides retry versus stop.
    pub fn retry_after(&self, err: &impl Retryable, attempt: u32) -> Option<Duration> {
        if !err.is_transient() || attempt >= self.attempts {
            return None;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        Some(self.first_backoff.saturating_mul(factor).min(self.max_backoff))
    }

    /// How long to wait before committing again after the `conflicts`-th commit
    /// conflict in a row (another writer committed first), or `None` to leave it to
    /// [`RetryPolicy::retry_after`]. A conflict is contention, not an outage: each one
    /// is another writer's progress, so the commit is tried again almost at once
    /// against the new version, after a short random pause (so that two writers do
    /// not collide again in step), up to [`CONFLICT_RETRIES`] times.
    pub fn after_conflict(conflicts: u32) -> Option<Duration> {
        if conflicts >= CONFLICT_RETRIES {
            return None;
        }
        let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u16 % 50);
        Some(Duration::from_millis(5 + jitter))
    }

    /// Runs `op` until it succeeds, fails permanently, or runs out of attempts. `op` must
    /// be safe to repeat (sinks check their committed progress before writing again).
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.retry_after(&e, attempt) {
                    Some(backoff) => {
                        tracing::warn!(error = %e, attempt, ?backoff, "{what} failed; retrying");
                        tokio::time::sleep(backoff).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(bool);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transient={}", self.0)
        }
    }
    impl Retryable for E {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_give_up() {
        let policy = RetryPolicy::default();
        let mut calls = 0;
        let r: Result<(), E> = policy
            .run("op", || {
                calls += 1;
                async { Err(E(true)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, policy.attempts);

        let mut calls = 0;
        let r: Result<u32, E> = policy
            .run("op", || {
                calls += 1;
                let c = calls;
                async move { if c < 3 { Err(E(true)) } else { Ok(c) } }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_stop_at_once() {
        let mut calls = 0;
        let r: Result<(), E> = RetryPolicy::default()
            .run("op", || {
                calls += 1;
                async { Err(E(false)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
