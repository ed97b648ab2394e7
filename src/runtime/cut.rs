//! How micro-batches are cut from what the source hands over: never inside one source
//! transaction (records sharing a position), and markers and spilled transactions in
//! micro-batches of their own.

use super::RunError;
use crate::sink::dead_letter;
use crate::source::SourceBatch;

/// Splits `b` after `k` rows, or after the rest of the records sharing the `k`-th
/// record's position (one source transaction is never split); the head resumes at the
/// tail's first position. Rejected records go with the side their position falls in.
/// No tail when nothing is left after the cut.
pub(super) fn split(b: SourceBatch, k: usize) -> (SourceBatch, Option<SourceBatch>) {
    let n = b.records.num_rows();
    let positions = b.positions.values();
    let k = match k.checked_sub(1) {
        // Cut after the last record sharing the (k-1)-th record's position.
        Some(last) => last + positions[last..].partition_point(|p| *p == positions[last]),
        None => 0,
    };
    if k == 0 || k >= n {
        return (b, None);
    }
    let next = b.positions.value(k);
    let (rejected_head, rejected_tail) = match &b.rejected {
        None => (None, None),
        Some(r) => {
            let cut = dead_letter::split_at_position(r, next);
            let head = r.slice(0, cut);
            let tail = r.slice(cut, r.num_rows() - cut);
            (
                (head.num_rows() > 0).then_some(head),
                (tail.num_rows() > 0).then_some(tail),
            )
        }
    };
    let head = SourceBatch {
        stream: b.stream.clone(),
        shard: b.shard.clone(),
        records: b.records.slice(0, k),
        positions: b.positions.slice(0, k),
        next,
        end_of_input: false,
        rejected: rejected_head,
        control: None,
        spilled: None,
        cursor: None,
    };
    let tail = SourceBatch {
        records: b.records.slice(k, n - k),
        positions: b.positions.slice(k, n - k),
        rejected: rejected_tail,
        ..b
    };
    (head, Some(tail))
}

/// Whether `b` is committed in a micro-batch of its own (with its kind at its
/// position): control markers and spilled transactions.
pub(super) fn travels_alone(b: &SourceBatch) -> bool {
    b.control.is_some() || b.spilled.is_some()
}

/// `pending` with every spilled batch read into memory, one batch per part; `None`
/// when nothing spilled.
// An error ends the run, so its size never matters on the hot path.
#[allow(clippy::result_large_err)]
pub(super) fn load_spilled(pending: &[SourceBatch]) -> Result<Option<Vec<SourceBatch>>, RunError> {
    if pending.iter().all(|b| b.spilled.is_none()) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for b in pending {
        let Some(spilled) = &b.spilled else {
            out.push(b.clone());
            continue;
        };
        tracing::warn!(stream = %b.stream, rows = spilled.rows(), "aggregates read a spilled transaction into memory");
        let n = spilled.parts();
        for i in 0..n {
            let (records, positions) = spilled.read(i).map_err(|source| {
                RunError::Source(crate::source::SourceError::Io {
                    context: format!("reading spilled rows of {}", b.stream),
                    source,
                })
            })?;
            out.push(SourceBatch {
                records,
                positions,
                spilled: None,
                // Dead letters ride with the first part; progress is the same for all.
                rejected: if i == 0 { b.rejected.clone() } else { None },
                ..b.clone()
            });
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{Int64Array, RecordBatch};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    use super::split;
    use crate::source::SourceBatch;

    fn batch(positions: &[i64], next: i64) -> SourceBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("p", DataType::Int64, false)]));
        let p = Int64Array::from(positions.to_vec());
        SourceBatch {
            stream: Arc::from("s"),
            shard: Arc::from("s"),
            records: RecordBatch::try_new(schema, vec![Arc::new(p.clone())]).unwrap(),
            positions: p,
            next,
            end_of_input: false,
            rejected: None,
            control: None,
            spilled: None,
            cursor: None,
        }
    }

    #[test]
    fn a_split_never_cuts_records_that_share_a_position() {
        // Three transactions: positions 10 (3 rows), 20 (2 rows), 30 (1 row).
        let b = batch(&[10, 10, 10, 20, 20, 30], 31);
        let (head, tail) = split(b.clone(), 2);
        let tail = tail.unwrap();
        assert_eq!(
            head.records.num_rows(),
            3,
            "the cut moves to the end of transaction 10"
        );
        assert_eq!(head.next, 20);
        assert_eq!(tail.positions.values(), &[20, 20, 30]);
        assert_eq!(tail.next, 31);

        let (head, tail) = split(b.clone(), 3);
        assert_eq!((head.records.num_rows(), head.next), (3, 20));
        assert_eq!(tail.unwrap().records.num_rows(), 3);

        // A cut inside the last transaction takes the whole batch.
        let (whole, none) = split(batch(&[10, 10, 10], 11), 1);
        assert!(none.is_none());
        assert_eq!((whole.records.num_rows(), whole.next), (3, 11));
    }
}
