//! Which progress a shard resumes from: the smallest over the tables its stream feeds,
//! read from the tables held in memory ([`held`]) or afresh from storage ([`Oracle`],
//! for shards that another process may have written).

use std::collections::HashMap;

use async_trait::async_trait;

use crate::config::Pipeline;
use crate::progress::Progress;
use crate::sink::{DeltaSink, Sink, TableOptions};
use crate::source::{ShardInfo, TableProgress};

/// Per shard, the smallest progress over the tables (`(from, committed)`) its stream
/// feeds; a shard that some such table does not hold is left out (read from the start).
pub(super) fn held(shards: &[ShardInfo], committed: &[(&str, &Progress)]) -> Progress {
    let mut out = Progress::new();
    for shard in shards {
        let feeds = |from: &str| shard.stream.as_deref().is_none_or(|s| s == from);
        let mut min: Option<i64> = None;
        let mut any = false;
        let mut missing = false;
        for (_, p) in committed.iter().filter(|(from, _)| feeds(from)) {
            any = true;
            match p.get(&shard.name) {
                Some(v) => min = Some(min.map_or(v, |m| m.min(v))),
                None => missing = true,
            }
        }
        if let (true, false, Some(v)) = (any, missing, min) {
            out.advance(&shard.name, v);
        }
    }
    out
}

/// Reads the tables' progress from storage.
#[derive(Debug)]
pub(super) struct Oracle {
    pipeline: String,
    /// Table name, its URL and the stream it reads.
    tables: Vec<(String, url::Url, String)>,
    storage: HashMap<String, String>,
    checkpoint_every: u32,
    shards: Vec<ShardInfo>,
}

impl Oracle {
    pub(super) fn new(p: &Pipeline, shards: &[ShardInfo]) -> Self {
        let tables = p
            .fed_tables()
            .map(|(name, from)| (name.to_string(), p.sink.table_url(name), from.to_string()))
            .collect();
        Self {
            pipeline: p.name.clone(),
            tables,
            storage: p.sink.storage_options(),
            checkpoint_every: p.sink.checkpoint_every,
            shards: shards.to_vec(),
        }
    }
}

#[async_trait]
impl TableProgress for Oracle {
    async fn held(&self, shards: &[String]) -> Result<Progress, String> {
        let wanted: Vec<ShardInfo> = self
            .shards
            .iter()
            .filter(|s| shards.contains(&s.name))
            .cloned()
            .collect();
        let mut committed = Vec::with_capacity(self.tables.len());
        for (name, url, from) in &self.tables {
            let sink = DeltaSink::open(
                name,
                url.clone(),
                self.storage.clone(),
                &self.pipeline,
                shards,
                TableOptions::append(self.checkpoint_every),
            )
            .await
            .map_err(|e| e.to_string())?;
            committed.push((from.clone(), sink.committed().clone()));
        }
        let refs: Vec<(&str, &Progress)> = committed.iter().map(|(f, p)| (f.as_str(), p)).collect();
        Ok(held(&wanted, &refs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_resumes_at_the_least_progress_of_the_tables_its_stream_feeds() {
        let info = |name: &str, stream: Option<&str>| ShardInfo {
            name: name.into(),
            stream: stream.map(str::to_string),
        };
        let shards = [info("a-0", Some("a")), info("b-0", Some("b")), info("slot", None)];
        let mut ta = Progress::new();
        ta.advance("a-0", 10);
        ta.advance("slot", 7);
        let mut tb = Progress::new();
        tb.advance("b-0", 4);
        tb.advance("slot", 9);
        let mut tb2 = Progress::new();
        tb2.advance("b-0", 3);
        let held = held(&shards, &[("a", &ta), ("b", &tb), ("b", &tb2)]);
        // b's tables do not hold a-0 and must not pull it back to the start.
        assert_eq!(held.get("a-0"), Some(10));
        assert_eq!(held.get("b-0"), Some(3));
        // A shard of every stream needs every table; tb2 lacks it.
        assert_eq!(held.get("slot"), None);
    }
}
