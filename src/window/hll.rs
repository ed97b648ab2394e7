//! HyperLogLog for `approx_count_distinct`: 2^12 one-byte registers (4 KiB, allocated
//! on the first value), 64-bit xxHash64 hashes of the row-encoded value, and the linear
//! counting correction for small counts. Standard error 1.04/√4096 ≈ 1.6 %; a group
//! with few distinct values is counted nearly exactly by the correction.
//!
//! The hash is seeded with a constant so registers in a state snapshot mean the same in
//! the process that restores them.

use twox_hash::XxHash64;

const P: u32 = 12;
const M: usize = 1 << P;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Hll {
    registers: Option<Box<[u8]>>,
}

impl Hll {
    pub fn hash(value: &[u8]) -> u64 {
        XxHash64::oneshot(0, value)
    }

    pub fn add(&mut self, hash: u64) {
        let r = self
            .registers
            .get_or_insert_with(|| vec![0; M].into_boxed_slice());
        let index = (hash >> (64 - P)) as usize;
        // Rank of the first 1 bit in the remaining bits; all-zero ranks as the maximum.
        let rest = hash << P;
        let rank = u8::try_from((rest.leading_zeros() + 1).min(64 - P + 1)).unwrap_or(u8::MAX);
        if r[index] < rank {
            r[index] = rank;
        }
    }

    pub fn merge(&mut self, other: &Self) {
        let Some(o) = &other.registers else { return };
        let r = self
            .registers
            .get_or_insert_with(|| vec![0; M].into_boxed_slice());
        for (a, b) in r.iter_mut().zip(o.iter()) {
            *a = (*a).max(*b);
        }
    }

    /// Empties it, keeping the registers' memory.
    pub fn clear(&mut self) {
        if let Some(r) = &mut self.registers {
            r.fill(0);
        }
    }

    pub fn estimate(&self) -> i64 {
        let Some(r) = &self.registers else { return 0 };
        #[allow(clippy::cast_precision_loss)]
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = r.iter().map(|&x| 2f64.powi(-i32::from(x))).sum();
        let raw = alpha * m * m / sum;
        let zeros = r.iter().filter(|&&x| x == 0).count();
        #[allow(clippy::cast_precision_loss)]
        let e = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        #[allow(clippy::cast_possible_truncation)]
        let rounded = e.round() as i64;
        rounded
    }

    /// The registers (empty before the first value), for snapshots.
    pub fn bytes(&self) -> &[u8] {
        self.registers.as_deref().unwrap_or(&[])
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes.len() {
            0 => Some(Self::default()),
            M => Some(Self {
                registers: Some(bytes.into()),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_stay_within_four_standard_errors() {
        for n in [1u64, 10, 100, 1_000, 10_000, 100_000, 1_000_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.add(Hll::hash(&i.to_le_bytes()));
                // Repeats do not count.
                h.add(Hll::hash(&(i / 2).to_le_bytes()));
            }
            #[allow(clippy::cast_precision_loss)]
            let err = (h.estimate() as f64 - n as f64).abs() / n as f64;
            assert!(
                err < 4.0 * 1.04 / 64.0,
                "n = {n}: estimate {} ({err})",
                h.estimate()
            );
        }
    }

    #[test]
    fn merging_equals_adding_and_bytes_round_trip() {
        let (mut a, mut b, mut all) = (Hll::default(), Hll::default(), Hll::default());
        for i in 0..5_000u64 {
            let x = Hll::hash(&i.to_le_bytes());
            if i % 3 == 0 {
                a.add(x)
            } else {
                b.add(x)
            }
            all.add(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(Hll::from_bytes(a.bytes()), Some(a));
        assert_eq!(Hll::from_bytes(&[1, 2, 3]), None);
    }
}
