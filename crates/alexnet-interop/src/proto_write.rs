//! A protobuf wire-format writer: just enough of the encoding to write ONNX
//! models. It knows no schema; callers name fields by number.
//!
//! Nested messages are written in place: [`Writer::message`] appends the field's
//! key, lets the caller write the body into the same buffer, then inserts the
//! body's length in front of it. That moves the body once per nesting level but
//! never holds a second copy of it, which matters for models whose weights are
//! hundreds of megabytes.

/// How a field's value is laid out on the wire (the low three bits of its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    Varint = 0,
    Fixed64 = 1,
    LengthDelimited = 2,
    Fixed32 = 5,
}

/// The largest field number protobuf allows (29 bits).
pub const MAX_FIELD: u32 = (1 << 29) - 1;

/// Appends `value` as a base-128 varint, least significant group first.
pub fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The number of bytes [`encode_varint`] writes for `value`.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// A message being written; fields appear in the order they are added.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// A writer whose buffer already holds `bytes` without growing.
    pub fn with_capacity(bytes: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// The encoded message so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn key(&mut self, field: u32, wire: WireType) {
        // Field numbers come from the schema in our own code, never from data.
        assert!(
            (1..=MAX_FIELD).contains(&field),
            "protobuf field number {field} out of range"
        );
        encode_varint(((field as u64) << 3) | wire as u64, &mut self.buf);
    }

    /// A fixed-width field (`wire` is `Fixed32` or `Fixed64`): its key, then
    /// the value's little-endian `bytes`.
    fn fixed(&mut self, field: u32, wire: WireType, bytes: &[u8]) -> &mut Self {
        self.key(field, wire);
        self.buf.extend_from_slice(bytes);
        self
    }

    /// An unsigned varint field (`uint32`, `uint64`, `bool`, enums).
    pub fn uint64(&mut self, field: u32, value: u64) -> &mut Self {
        self.key(field, WireType::Varint);
        encode_varint(value, &mut self.buf);
        self
    }

    /// An `int64` field: negative values are written as their 64-bit two's
    /// complement (ten bytes), as protobuf does for non-zigzag types.
    pub fn int64(&mut self, field: u32, value: i64) -> &mut Self {
        self.uint64(field, value as u64)
    }

    /// An `int32` field: sign-extended to 64 bits first, as protobuf requires,
    /// so that readers of `int64` fields see the same number.
    pub fn int32(&mut self, field: u32, value: i32) -> &mut Self {
        self.int64(field, i64::from(value))
    }

    pub fn fixed32(&mut self, field: u32, value: u32) -> &mut Self {
        self.fixed(field, WireType::Fixed32, &value.to_le_bytes())
    }

    pub fn float(&mut self, field: u32, value: f32) -> &mut Self {
        self.fixed32(field, value.to_bits())
    }

    pub fn fixed64(&mut self, field: u32, value: u64) -> &mut Self {
        self.fixed(field, WireType::Fixed64, &value.to_le_bytes())
    }

    pub fn double(&mut self, field: u32, value: f64) -> &mut Self {
        self.fixed64(field, value.to_bits())
    }

    pub fn bytes(&mut self, field: u32, value: &[u8]) -> &mut Self {
        self.key(field, WireType::LengthDelimited);
        encode_varint(value.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(value);
        self
    }

    pub fn string(&mut self, field: u32, value: &str) -> &mut Self {
        self.bytes(field, value.as_bytes())
    }

    /// A length-delimited field whose body `body` writes into this same writer:
    /// a nested message, or raw bytes through [`Writer::raw`].
    pub fn message(&mut self, field: u32, body: impl FnOnce(&mut Writer)) -> &mut Self {
        self.key(field, WireType::LengthDelimited);
        let start = self.buf.len();
        body(self);
        let mut length = Vec::with_capacity(10);
        encode_varint((self.buf.len() - start) as u64, &mut length);
        self.buf.splice(start..start, length);
        self
    }

    /// Appends bytes with no key: only meaningful inside [`Writer::message`].
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A packed repeated `int64` field: one key, then the varints back to back.
    /// Nothing is written for an empty list (protobuf's encoding of "no elements").
    pub fn packed_int64(&mut self, field: u32, values: &[i64]) -> &mut Self {
        if values.is_empty() {
            return self;
        }
        let length: usize = values.iter().map(|&v| varint_len(v as u64)).sum();
        self.key(field, WireType::LengthDelimited);
        encode_varint(length as u64, &mut self.buf);
        for &v in values {
            encode_varint(v as u64, &mut self.buf);
        }
        self
    }

    /// A packed repeated `float` field (fixed 32-bit little-endian values).
    pub fn packed_floats(&mut self, field: u32, values: &[f32]) -> &mut Self {
        if values.is_empty() {
            return self;
        }
        self.key(field, WireType::LengthDelimited);
        encode_varint(4 * values.len() as u64, &mut self.buf);
        for v in values {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_varint(value, &mut out);
        out
    }

    #[test]
    fn varints_match_the_protobuf_documentation() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 16383, 16384, 1 << 35, u64::MAX] {
            assert_eq!(varint_len(v), varint(v).len(), "{v}");
        }
    }

    #[test]
    fn scalar_fields_have_their_keys_and_encodings() {
        let mut w = Writer::new();
        w.uint64(1, 150);
        assert_eq!(w.as_bytes(), [0x08, 0x96, 0x01]);

        let mut w = Writer::new();
        w.int64(2, -1);
        let mut expected = vec![0x10];
        expected.extend([0xff; 9]);
        expected.push(0x01);
        assert_eq!(w.as_bytes(), expected);
        assert_eq!(Writer::new().int32(2, -1).as_bytes(), expected);

        let mut w = Writer::new();
        w.float(2, 1.0);
        assert_eq!(w.as_bytes(), [0x15, 0x00, 0x00, 0x80, 0x3f]);

        let mut w = Writer::new();
        w.double(1, 1.0);
        assert_eq!(
            w.as_bytes(),
            [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
            "fixed64 key then little-endian bits"
        );

        let mut w = Writer::new();
        w.string(2, "testing");
        assert_eq!(w.as_bytes(), b"\x12\x07testing");
    }

    #[test]
    fn field_numbers_past_fifteen_take_two_key_bytes() {
        let mut w = Writer::new();
        w.uint64(20, 1);
        assert_eq!(w.as_bytes(), [0xa0, 0x01, 0x01]);
    }

    #[test]
    fn nested_messages_get_their_length_in_front() {
        // The documentation's example: message Test3 { Test1 c = 3; } with a = 150.
        let mut w = Writer::new();
        w.message(3, |m| {
            m.uint64(1, 150);
        });
        assert_eq!(w.as_bytes(), [0x1a, 0x03, 0x08, 0x96, 0x01]);

        // A body of 200 bytes needs a two-byte length, inserted before the body.
        let mut w = Writer::new();
        w.uint64(1, 7).message(2, |m| {
            m.raw(&[0xab; 200]);
        });
        let bytes = w.finish();
        assert_eq!(&bytes[..5], [0x08, 0x07, 0x12, 0xc8, 0x01]);
        assert_eq!(bytes.len(), 5 + 200);
        assert!(bytes[5..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn messages_nest_several_levels() {
        let mut w = Writer::new();
        w.message(1, |a| {
            a.message(2, |b| {
                b.string(3, "x");
            });
            a.uint64(4, 1);
        });
        assert_eq!(
            w.as_bytes(),
            [0x0a, 0x07, 0x12, 0x03, 0x1a, 0x01, b'x', 0x20, 0x01]
        );
    }

    #[test]
    fn packed_fields_hold_their_elements_back_to_back() {
        // The documentation's example: repeated int32 f = 4 [packed] of 3, 270, 86942.
        let mut w = Writer::new();
        w.packed_int64(4, &[3, 270, 86942]);
        assert_eq!(
            w.as_bytes(),
            [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]
        );

        let mut w = Writer::new();
        w.packed_floats(1, &[1.0, -2.0]);
        assert_eq!(w.as_bytes(), [0x0a, 0x08, 0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]);

        let mut w = Writer::new();
        w.packed_int64(1, &[]).packed_floats(2, &[]);
        assert!(w.is_empty());
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn field_zero_is_a_programming_error() {
        Writer::new().uint64(0, 1);
    }
}
