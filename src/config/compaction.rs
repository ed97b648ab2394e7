//! `[sink.compaction]`: resolved against the sink's file size and the memory budget.

use std::time::Duration;

use super::values::ByteSize;
use super::{ConfigError, Resolver, RuntimeConfig, spec};
use crate::sink::compact::CompactionPolicy;

const DEFAULT_EVERY: Duration = Duration::from_secs(10);
const DEFAULT_MIN_FILES: usize = 10;

impl Resolver<'_> {
    /// The policy, or `None` when compaction is off. A round holds about `file_size`
    /// of output while it writes; it comes out of the half of the in-flight bytes that
    /// encoding and committing use, so it may take at most a quarter of those bytes.
    pub(super) fn compaction(
        &self,
        spec: &spec::CompactionSpec,
        target_file_size: ByteSize,
        runtime: &RuntimeConfig,
    ) -> Result<Option<CompactionPolicy>, ConfigError> {
        let largest = runtime.in_flight_bytes() / 4;
        let file_size = match spec.file_size {
            Some(size) if size.0 > largest => {
                return Err(self.err(
                    "sink.compaction.file_size",
                    format!(
                        "{size} does not fit the memory budget: at most {} with this runtime.memory, or raise runtime.memory",
                        ByteSize(largest)
                    ),
                ));
            }
            Some(size) if size.0 < 1024 * 1024 => {
                return Err(self.err("sink.compaction.file_size", "must be at least 1MiB"));
            }
            Some(size) => size.0,
            None => target_file_size.0.min(largest),
        };
        let every = spec.every.map_or(DEFAULT_EVERY, |s| s.0);
        if every.is_zero() {
            return Err(self.err(
                "sink.compaction.every",
                "must be longer than 0s (set enabled = false to turn compaction off)",
            ));
        }
        let min_files = spec.min_files.unwrap_or(DEFAULT_MIN_FILES);
        if min_files < 2 {
            return Err(self.err("sink.compaction.min_files", "must be at least 2"));
        }
        Ok(spec.enabled.unwrap_or(true).then_some(CompactionPolicy {
            every,
            min_files,
            file_size,
        }))
    }
}
