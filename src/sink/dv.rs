//! Deletion vectors: which rows of a data file are no longer part of the table.
//!
//! A Delta deletion vector (DV) is a set of row indexes, stored as a portable 64-bit
//! roaring bitmap ("RoaringBitmapArray": magic `1681511377` little-endian, then the
//! `RoaringTreemap` portable serialization) inside a DV file: a version byte `1`, then
//! per DV a big-endian size, the magic and bitmap, and a big-endian CRC-32 of the
//! magic and bitmap. An `add` action names its DV by descriptor: storage type `u`
//! (`<prefix><z85 of a UUID>` → `deletion_vector_<uuid>.bin` at the table root), the
//! offset of the DV's size field in that file, its size and cardinality.
//!
//! Writing goes through the delta kernel's own serializer (the kernel deltalake links),
//! so the bytes are the protocol's by construction; reading is done here, on the
//! object store the table already has, with every length and checksum verified
//! before a bitmap is trusted (a DV names rows that disappear from the table).
//!
//! Crash story: a DV file is written (put, unconditional: its UUID name is new) before
//! the commit that names it. A crash before the commit leaves an unreferenced DV file,
//! which `maintain`'s VACUUM removes after the retention like any orphan; nothing
//! reads a DV that no committed `add` names.

use bytes::Bytes;
use delta_kernel::actions::deletion_vector_writer::{DeletionVector, StreamingDeletionVectorWriter};
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use deltalake::{DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt as _;
use roaring::RoaringTreemap;

/// The RoaringBitmapArray magic (portable 64-bit format).
const MAGIC: u32 = 1_681_511_377;
/// CRC-32 (ISO-HDLC), as the protocol and the kernel use.
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn dv_err(message: impl Into<String>) -> DeltaTableError {
    DeltaTableError::Generic(format!("deletion vector: {}", message.into()))
}

/// A set of deleted row indexes, handed to the kernel's serializer as it is.
struct Rows(RoaringTreemap);

impl DeletionVector for Rows {
    type IndexIterator = roaring::treemap::IntoIter;

    fn into_iter(self) -> Self::IndexIterator {
        self.0.into_iter()
    }

    fn cardinality(&self) -> u64 {
        self.0.len()
    }

    fn serialize(self) -> delta_kernel::DeltaResult<Bytes> {
        let mut out = Vec::with_capacity(self.0.serialized_size());
        self.0
            .serialize_into(&mut out)
            .map_err(|e| delta_kernel::Error::generic(e.to_string()))?;
        Ok(Bytes::from(out))
    }
}

/// One DV file holding several DVs, and the descriptors that point into it.
#[derive(Debug)]
pub struct DvFile {
    /// Where to put it, relative to the table root.
    pub path: Path,
    pub bytes: Bytes,
    /// One descriptor per input bitmap, in input order.
    pub descriptors: Vec<DeletionVectorDescriptor>,
}

/// Serializes `bitmaps` into one new DV file (named by a fresh UUID).
pub fn encode(bitmaps: Vec<RoaringTreemap>) -> Result<DvFile, DeltaTableError> {
    let uuid = uuid::Uuid::new_v4();
    let encoded = z85::encode(uuid.as_bytes());
    let mut buf = Vec::new();
    let mut writer = StreamingDeletionVectorWriter::new(&mut buf);
    let mut descriptors = Vec::with_capacity(bitmaps.len());
    for bitmap in bitmaps {
        let written = writer
            .write_deletion_vector(Rows(bitmap))
            .map_err(|e| dv_err(e.to_string()))?;
        descriptors.push(DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: encoded.clone(),
            offset: Some(written.offset),
            size_in_bytes: written.size_in_bytes,
            cardinality: written.cardinality,
        });
    }
    writer.finalize().map_err(|e| dv_err(e.to_string()))?;
    Ok(DvFile {
        path: Path::from(format!("deletion_vector_{uuid}.bin")),
        bytes: Bytes::from(buf),
        descriptors,
    })
}

/// The file a `u` descriptor names, relative to the table root.
fn relative_path(dv: &DeletionVectorDescriptor) -> Result<Path, DeltaTableError> {
    let s = dv.path_or_inline_dv.as_str();
    if s.len() < 20 || !s.is_char_boundary(s.len() - 20) {
        return Err(dv_err(format!("path \"{s}\" is shorter than a z85 UUID")));
    }
    let (prefix, id) = s.split_at(s.len() - 20);
    let bytes = z85::decode(id).map_err(|_| dv_err(format!("\"{id}\" is not z85")))?;
    let uuid = uuid::Uuid::from_slice(&bytes).map_err(|e| dv_err(e.to_string()))?;
    Ok(if prefix.is_empty() {
        Path::from(format!("deletion_vector_{uuid}.bin"))
    } else {
        Path::from(format!("{prefix}/deletion_vector_{uuid}.bin"))
    })
}

/// Parses one stored DV (`size`, magic, bitmap, CRC) that starts at `data[0]`.
fn parse_stored(data: &[u8], size: usize) -> Result<RoaringTreemap, DeltaTableError> {
    if size < 4 || data.len() < 8 + size {
        return Err(dv_err(format!("{} bytes cannot hold a DV of {size}", data.len())));
    }
    let stored_size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if stored_size != size {
        return Err(dv_err(format!(
            "size {stored_size} in the file, {size} in the log"
        )));
    }
    let body = &data[4..4 + size];
    let crc = u32::from_be_bytes([data[4 + size], data[5 + size], data[6 + size], data[7 + size]]);
    if CRC.checksum(body) != crc {
        return Err(dv_err("CRC mismatch"));
    }
    parse_bitmap(body)
}

/// Magic plus portable bitmap.
fn parse_bitmap(body: &[u8]) -> Result<RoaringTreemap, DeltaTableError> {
    if body.len() < 4 {
        return Err(dv_err("too short for its magic"));
    }
    let magic = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    if magic != MAGIC {
        return Err(dv_err(format!(
            "magic {magic} is not the portable RoaringBitmapArray's"
        )));
    }
    RoaringTreemap::deserialize_from(&body[4..]).map_err(|e| dv_err(e.to_string()))
}

/// Reads the rows `dv` deletes, from the table's object store.
pub async fn read(
    store: &dyn ObjectStore,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap, DeltaTableError> {
    let size = usize::try_from(dv.size_in_bytes).map_err(|_| dv_err("negative size"))?;
    let bitmap = match dv.storage_type {
        StorageType::Inline => {
            let bytes = z85::decode(&dv.path_or_inline_dv).map_err(|_| dv_err("inline DV is not z85"))?;
            parse_bitmap(&bytes)?
        }
        StorageType::UuidRelativePath => {
            let path = relative_path(dv)?;
            let start = u64::try_from(dv.offset.unwrap_or(1)).map_err(|_| dv_err("negative offset"))?;
            let data = store.get_range(&path, start..start + 8 + size as u64).await?;
            parse_stored(&data, size)?
        }
        StorageType::AbsolutePath => {
            return Err(dv_err(format!(
                "absolute DV paths ({}) are not supported",
                dv.path_or_inline_dv
            )));
        }
    };
    if bitmap.len() != dv.cardinality as u64 {
        return Err(dv_err(format!(
            "{} rows in the bitmap, cardinality {} in the log",
            bitmap.len(),
            dv.cardinality
        )));
    }
    Ok(bitmap)
}

/// A stable identity of a DV (its file and offset, or its inline bytes): two
/// descriptors with the same identity delete the same rows.
pub fn identity(dv: &DeletionVectorDescriptor) -> String {
    format!(
        "{}{}@{}",
        dv.storage_type,
        dv.path_or_inline_dv,
        dv.offset.unwrap_or(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn written_dvs_read_back_and_tampering_is_caught() {
        let a: RoaringTreemap = [0u64, 5, 7, 1 << 33].into_iter().collect();
        let b: RoaringTreemap = (100u64..5000).collect();
        let file = encode(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(file.bytes[0], 1, "version byte");
        assert_eq!(file.descriptors[0].offset, Some(1));
        assert_eq!(file.descriptors[0].cardinality, 4);
        assert_eq!(relative_path(&file.descriptors[0]).unwrap(), file.path);
        let store = InMemory::new();
        store.put(&file.path, file.bytes.clone().into()).await.unwrap();
        assert_eq!(read(&store, &file.descriptors[0]).await.unwrap(), a);
        assert_eq!(read(&store, &file.descriptors[1]).await.unwrap(), b);

        // One flipped bit in the bitmap fails the CRC.
        let mut bad = file.bytes.to_vec();
        let last = file.descriptors[0].size_in_bytes as usize + 4;
        bad[last] ^= 1;
        store.put(&file.path, Bytes::from(bad).into()).await.unwrap();
        let err = read(&store, &file.descriptors[0]).await.unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
        // A descriptor whose size does not match the file is refused.
        let mut wrong = file.descriptors[1].clone();
        wrong.size_in_bytes -= 1;
        store.put(&file.path, file.bytes.clone().into()).await.unwrap();
        assert!(read(&store, &wrong).await.is_err());
        // Truncated files and garbage paths are errors, not panics.
        store
            .put(&file.path, file.bytes.slice(..10).into())
            .await
            .unwrap();
        assert!(read(&store, &file.descriptors[1]).await.is_err());
        let mut short = file.descriptors[0].clone();
        short.path_or_inline_dv = "abc".into();
        assert!(read(&store, &short).await.is_err());
    }

    #[tokio::test]
    async fn inline_dvs_are_read() {
        let a: RoaringTreemap = [3u64, 9].into_iter().collect();
        let mut body = MAGIC.to_le_bytes().to_vec();
        a.serialize_into(&mut body).unwrap();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let dv = DeletionVectorDescriptor {
            storage_type: StorageType::Inline,
            path_or_inline_dv: z85::encode(&body),
            offset: None,
            size_in_bytes: body.len() as i32,
            cardinality: 2,
        };
        assert_eq!(read(&InMemory::new(), &dv).await.unwrap(), a);
    }
}
