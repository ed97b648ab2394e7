//! Message headers → the `_headers` column: a map of header name → value bytes, in
//! the order the producer wrote them (a name may repeat).
//!
//! rdkafka's safe accessor unwraps each header name as UTF-8 and would panic on one
//! that is not, so names are read through librdkafka's C API here; a name that is not
//! UTF-8 is kept with its bad bytes replaced (U+FFFD), never a panic.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};

use deltalake::arrow::array::{Array, BinaryBuilder, MapBuilder, MapFieldNames, StringBuilder};
use deltalake::arrow::datatypes::DataType;
use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedMessage;

pub type HeadersBuilder = MapBuilder<StringBuilder, BinaryBuilder>;

/// A builder of `_headers` values.
pub fn builder() -> HeadersBuilder {
    MapBuilder::new(
        Some(MapFieldNames {
            entry: "key_value".into(),
            key: "key".into(),
            value: "value".into(),
        }),
        StringBuilder::new(),
        BinaryBuilder::new(),
    )
}

/// The type of the `_headers` column.
pub fn data_type() -> DataType {
    builder().finish().data_type().clone()
}

/// Appends one message's headers (an empty map when it has none).
pub fn append(m: &BorrowedMessage<'_>, out: &mut HeadersBuilder) {
    let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message `m` borrows; librdkafka hands back a
    // pointer to headers the message owns (or an error and no pointer).
    let err = unsafe { rdsys::rd_kafka_message_headers(m.ptr(), &mut hdrs) };
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && !hdrs.is_null() {
        let mut idx = 0;
        loop {
            let mut name: *const c_char = std::ptr::null();
            let mut value: *const c_void = std::ptr::null();
            let mut size = 0usize;
            // SAFETY: `hdrs` belongs to `m`, alive for this call; out-of-range `idx`
            // answers an error and writes nothing.
            let err = unsafe { rdsys::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                break;
            }
            // SAFETY: librdkafka's header names are NUL-terminated and live as long
            // as the message; values are `size` bytes, or null for a null value.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            let value =
                (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
            out.keys().append_value(name);
            out.values().append_option(value);
            idx += 1;
        }
    }
    // Appending a map never fails with matching key and value counts.
    let _ = out.append(true);
}
