//! A small reader of the protobuf wire format over a byte slice, for files we
//! do not trust (Caffe's `.caffemodel` and `.binaryproto`).
//!
//! It knows nothing of schemas: a [`Reader`] yields the fields of one message
//! (number and raw value) in file order, and the caller decides what each field
//! means, descending into nested messages with [`Reader::nested`]. Everything
//! borrows from the input; the only allocations are the vectors of repeated
//! scalars, and those are sized from the bytes actually present, never from a
//! count the file declares.
//!
//! Checks: varints longer than ten bytes or wider than 64 bits, field number 0
//! or above 2^29 - 1, wire types other than the four current ones (the
//! deprecated groups are refused), lengths past the end of their message,
//! packed fixed-width data whose length is not a multiple of the width, and
//! messages nested deeper than [`MAX_DEPTH`].

use std::fmt;

/// The deepest nesting [`Reader::nested`] accepts (protobuf's own parsers stop
/// at 100; Caffe's deepest message is four levels down).
pub const MAX_DEPTH: usize = 64;

/// The largest field number protobuf allows (2^29 - 1).
const MAX_FIELD: u64 = (1 << 29) - 1;

/// What went wrong and where: `offset` counts bytes from the start of the
/// message being read (nested readers count from their own start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for DecodeError {}

pub type DecodeResult<T> = Result<T, DecodeError>;

/// The raw value of one field, by wire type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// Wire type 0: int32/64, uint32/64, sint, bool, enum.
    Varint(u64),
    /// Wire type 1: fixed64, sfixed64, double.
    Fixed64(u64),
    /// Wire type 2: bytes, string, nested message, packed repeated scalars.
    Bytes(&'a [u8]),
    /// Wire type 5: fixed32, sfixed32, float.
    Fixed32(u32),
}

impl Value<'_> {
    /// The wire type's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Varint(_) => "a varint",
            Value::Fixed64(_) => "a 64-bit value",
            Value::Bytes(_) => "a length-delimited value",
            Value::Fixed32(_) => "a 32-bit value",
        }
    }
}

/// One field of a message: its number and raw value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
}

/// Reads the fields of one message in order.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader of a top-level message.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            depth: 0,
        }
    }

    /// A reader of a message nested in this one (the bytes of a length-delimited
    /// field); refused past [`MAX_DEPTH`] so that a hostile file cannot drive a
    /// recursive caller into a stack overflow.
    pub fn nested(&self, bytes: &'a [u8]) -> DecodeResult<Reader<'a>> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError {
                offset: self.pos,
                message: format!("messages nested deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(Reader {
            bytes,
            pos: 0,
            depth: self.depth + 1,
        })
    }

    /// How deep this message is (0 for the top level).
    pub fn depth(&self) -> usize {
        self.depth
    }

    fn error<T>(&self, offset: usize, message: impl Into<String>) -> DecodeResult<T> {
        Err(DecodeError {
            offset,
            message: message.into(),
        })
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> DecodeResult<Option<Field<'a>>> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > MAX_FIELD {
            return self.error(start, format!("invalid field number {number}"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take_array::<8>()?)),
            2 => {
                let len_at = self.pos;
                let len = self.varint()?;
                let left = self.bytes.len() - self.pos;
                // Compared as u64 so that a length beyond usize cannot wrap.
                if len > left as u64 {
                    return self.error(
                        len_at,
                        format!(
                            "field {number} declares {len} bytes but only {left} remain in its message"
                        ),
                    );
                }
                Value::Bytes(self.take(len as usize)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take_array::<4>()?)),
            3 | 4 => {
                return self.error(
                    start,
                    format!("field {number} is a group (wire types 3 and 4 are not supported)"),
                );
            }
            other => {
                return self.error(
                    start,
                    format!("field {number} has invalid wire type {other}"),
                );
            }
        };
        Ok(Some(Field {
            number: number as u32,
            value,
        }))
    }

    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return self.error(
                self.pos,
                format!("truncated: {n} bytes needed, {left} remain"),
            );
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn take_array<const N: usize>(&mut self) -> DecodeResult<[u8; N]> {
        let slice = self.take(N)?;
        Ok(slice.try_into().expect("take returned N bytes"))
    }

    fn varint(&mut self) -> DecodeResult<u64> {
        let (value, used) = decode_varint(&self.bytes[self.pos..]).map_err(|mut e| {
            e.offset += self.pos;
            e
        })?;
        self.pos += used;
        Ok(value)
    }
}

/// Decodes one varint at the start of `bytes`: its value and the bytes it used.
///
/// Non-minimal encodings (`0x80 0x00` for 0) are accepted, as protobuf's own
/// parsers accept them; more than ten bytes, or a tenth byte carrying bits past
/// the 64th, are not.
pub fn decode_varint(bytes: &[u8]) -> DecodeResult<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate() {
        if i == 9 {
            // The tenth byte holds bit 63 only: it must end the varint and be 0 or 1.
            let message = if byte & 0x80 != 0 {
                "varint longer than 10 bytes"
            } else if byte > 1 {
                "varint overflows 64 bits"
            } else {
                return Ok((value | u64::from(byte) << 63, 10));
            };
            return Err(DecodeError {
                offset: 0,
                message: message.into(),
            });
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(DecodeError {
        offset: 0,
        message: "truncated varint".into(),
    })
}

/// The fields of a packed repeated varint field (`[packed = true]` int64 etc.).
pub fn packed_varints(bytes: &[u8]) -> DecodeResult<Vec<u64>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (value, used) = decode_varint(&bytes[pos..]).map_err(|mut e| {
            e.offset += pos;
            e
        })?;
        out.push(value);
        pos += used;
    }
    Ok(out)
}

fn packed_fixed<const N: usize, T>(
    bytes: &[u8],
    what: &str,
    convert: impl Fn([u8; N]) -> T,
) -> DecodeResult<Vec<T>> {
    if !bytes.len().is_multiple_of(N) {
        return Err(DecodeError {
            offset: bytes.len() - bytes.len() % N,
            message: format!(
                "packed {what} data of {} bytes, not a multiple of {N}",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(N)
        .map(|c| convert(c.try_into().expect("chunks of N bytes")))
        .collect())
}

/// Packed little-endian `float`s.
pub fn packed_f32(bytes: &[u8]) -> DecodeResult<Vec<f32>> {
    packed_fixed::<4, _>(bytes, "float", f32::from_le_bytes)
}

/// Packed little-endian `double`s.
pub fn packed_f64(bytes: &[u8]) -> DecodeResult<Vec<f64>> {
    packed_fixed::<8, _>(bytes, "double", f64::from_le_bytes)
}

fn wrong_type<T>(number: u32, value: &Value<'_>, expected: &str) -> DecodeResult<T> {
    Err(DecodeError {
        offset: 0,
        message: format!("field {number} is {}, expected {expected}", value.kind()),
    })
}

/// Appends a repeated field's values, packed (a length-delimited value, which
/// `packed` decodes) or one a field (which `single` reads): protobuf writers may
/// use either encoding for the same field.
fn push_repeated<T>(
    out: &mut Vec<T>,
    field: &Field<'_>,
    packed: fn(&[u8]) -> DecodeResult<Vec<T>>,
    single: fn(&Field<'_>) -> DecodeResult<T>,
) -> DecodeResult<()> {
    match field.value {
        Value::Bytes(bytes) => out.extend(packed(bytes)?),
        _ => out.push(single(field)?),
    }
    Ok(())
}

/// Appends a repeated `float` field's values, packed or not.
pub fn push_f32(out: &mut Vec<f32>, field: &Field<'_>) -> DecodeResult<()> {
    push_repeated(out, field, packed_f32, float)
}

/// Appends a repeated `double` field's values, packed or not.
pub fn push_f64(out: &mut Vec<f64>, field: &Field<'_>) -> DecodeResult<()> {
    push_repeated(out, field, packed_f64, double)
}

/// Appends a repeated varint field's values, packed or not.
pub fn push_varints(out: &mut Vec<u64>, field: &Field<'_>) -> DecodeResult<()> {
    push_repeated(out, field, packed_varints, varint)
}

/// A singular varint field.
pub fn varint(field: &Field<'_>) -> DecodeResult<u64> {
    match field.value {
        Value::Varint(v) => Ok(v),
        other => wrong_type(field.number, &other, "varint"),
    }
}

/// A singular `int64` / `int32` field (negative values are ten-byte two's
/// complement varints).
pub fn int64(field: &Field<'_>) -> DecodeResult<i64> {
    varint(field).map(|v| v as i64)
}

/// A singular `bool` field.
pub fn boolean(field: &Field<'_>) -> DecodeResult<bool> {
    varint(field).map(|v| v != 0)
}

/// A singular `float` field.
pub fn float(field: &Field<'_>) -> DecodeResult<f32> {
    match field.value {
        Value::Fixed32(bits) => Ok(f32::from_bits(bits)),
        other => wrong_type(field.number, &other, "float"),
    }
}

/// A singular `double` field.
pub fn double(field: &Field<'_>) -> DecodeResult<f64> {
    match field.value {
        Value::Fixed64(bits) => Ok(f64::from_bits(bits)),
        other => wrong_type(field.number, &other, "double"),
    }
}

/// A length-delimited field's bytes (a string, bytes or nested message).
pub fn bytes<'a>(field: &Field<'a>) -> DecodeResult<&'a [u8]> {
    match field.value {
        Value::Bytes(b) => Ok(b),
        other => wrong_type(field.number, &other, "a length-delimited value"),
    }
}

/// A `string` field, which protobuf requires to be UTF-8.
pub fn string(field: &Field<'_>) -> DecodeResult<String> {
    let raw = bytes(field)?;
    std::str::from_utf8(raw)
        .map(str::to_string)
        .map_err(|e| DecodeError {
            offset: e.valid_up_to(),
            message: format!("field {} is not valid UTF-8 text", field.number),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 300, 1 << 32, u64::MAX - 1, u64::MAX] {
            let bytes = encode_varint(v);
            assert_eq!(decode_varint(&bytes).unwrap(), (v, bytes.len()), "{v}");
        }
        assert_eq!(encode_varint(u64::MAX).len(), 10);
    }

    #[test]
    fn non_minimal_varints_are_accepted() {
        assert_eq!(decode_varint(&[0x80, 0x00]).unwrap(), (0, 2));
        assert_eq!(decode_varint(&[0x81, 0x80, 0x00]).unwrap(), (1, 3));
    }

    #[test]
    fn overlong_overflowing_and_truncated_varints_are_refused() {
        let eleven = [0x80u8; 10]
            .iter()
            .copied()
            .chain([0x00])
            .collect::<Vec<_>>();
        let err = decode_varint(&eleven).unwrap_err();
        assert!(err.message.contains("longer than 10"), "{err}");
        let wide = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        let err = decode_varint(&wide).unwrap_err();
        assert!(err.message.contains("overflows 64 bits"), "{err}");
        let err = decode_varint(&[0x80, 0x80]).unwrap_err();
        assert!(err.message.contains("truncated"), "{err}");
        assert!(decode_varint(&[]).is_err());
    }

    #[test]
    fn fields_of_every_wire_type_are_read() {
        let mut msg = vec![0x08, 0x96, 0x01]; // field 1 varint 150
        msg.push(0x11); // field 2 fixed64
        msg.extend(1.5f64.to_le_bytes());
        msg.extend([0x1a, 0x03, b'a', b'b', b'c']); // field 3 bytes
        msg.push(0x25); // field 4 fixed32
        msg.extend(2.5f32.to_le_bytes());
        let mut r = Reader::new(&msg);
        let f = r.next_field().unwrap().unwrap();
        assert_eq!((f.number, varint(&f).unwrap()), (1, 150));
        let f = r.next_field().unwrap().unwrap();
        assert_eq!(f.value, Value::Fixed64(1.5f64.to_bits()));
        let f = r.next_field().unwrap().unwrap();
        assert_eq!(string(&f).unwrap(), "abc");
        let f = r.next_field().unwrap().unwrap();
        assert_eq!(float(&f).unwrap(), 2.5);
        assert_eq!(r.next_field().unwrap(), None);
    }

    #[test]
    fn lengths_past_the_end_are_refused_before_reading() {
        // field 1, length 2^40: must not be trusted.
        let mut msg = vec![0x0a];
        msg.extend(encode_varint(1 << 40));
        msg.extend([1, 2, 3]);
        let err = Reader::new(&msg).next_field().unwrap_err();
        assert!(err.message.contains("1099511627776 bytes"), "{err}");
        assert!(err.message.contains("3 remain"), "{err}");
        // A length of u64::MAX cannot wrap into something small.
        let mut msg = vec![0x0a];
        msg.extend(encode_varint(u64::MAX));
        assert!(Reader::new(&msg).next_field().is_err());
    }

    #[test]
    fn truncated_fixed_width_values_are_refused() {
        let err = Reader::new(&[0x25, 1, 2]).next_field().unwrap_err();
        assert!(err.message.contains("truncated"), "{err}");
        let err = Reader::new(&[0x09, 1, 2, 3]).next_field().unwrap_err();
        assert!(err.message.contains("truncated"), "{err}");
    }

    #[test]
    fn bad_keys_are_refused() {
        let err = Reader::new(&[0x00, 0x00]).next_field().unwrap_err();
        assert!(err.message.contains("field number 0"), "{err}");
        let err = Reader::new(&[0x0b]).next_field().unwrap_err();
        assert!(err.message.contains("group"), "{err}");
        let err = Reader::new(&[0x0e]).next_field().unwrap_err();
        assert!(err.message.contains("wire type 6"), "{err}");
        let mut big = encode_varint((MAX_FIELD + 1) << 3);
        big.push(0);
        let err = Reader::new(&big).next_field().unwrap_err();
        assert!(err.message.contains("invalid field number"), "{err}");
    }

    #[test]
    fn packed_and_unpacked_repeated_scalars() {
        let mut floats = Vec::new();
        let packed: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        push_f32(
            &mut floats,
            &Field {
                number: 5,
                value: Value::Bytes(&packed),
            },
        )
        .unwrap();
        push_f32(
            &mut floats,
            &Field {
                number: 5,
                value: Value::Fixed32(3.0f32.to_bits()),
            },
        )
        .unwrap();
        assert_eq!(floats, [1.0, -2.0, 3.0]);

        let err = packed_f32(&[0, 0, 0, 0, 0]).unwrap_err();
        assert!(err.message.contains("not a multiple of 4"), "{err}");
        let err = packed_f64(&[0; 12]).unwrap_err();
        assert!(err.message.contains("not a multiple of 8"), "{err}");

        let mut ints = Vec::new();
        let packed = [0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05];
        push_varints(
            &mut ints,
            &Field {
                number: 1,
                value: Value::Bytes(&packed),
            },
        )
        .unwrap();
        push_varints(
            &mut ints,
            &Field {
                number: 1,
                value: Value::Varint(7),
            },
        )
        .unwrap();
        assert_eq!(ints, [3, 270, 86942, 7]);
        assert!(packed_varints(&[0x80]).is_err());
        let wrong = push_f32(
            &mut floats,
            &Field {
                number: 5,
                value: Value::Varint(1),
            },
        )
        .unwrap_err();
        assert!(wrong.message.contains("expected float"), "{wrong}");
    }

    #[test]
    fn negative_int64_is_a_ten_byte_varint() {
        let bytes = encode_varint(-2i64 as u64);
        assert_eq!(bytes.len(), 10);
        let (v, _) = decode_varint(&bytes).unwrap();
        let f = Field {
            number: 1,
            value: Value::Varint(v),
        };
        assert_eq!(int64(&f).unwrap(), -2);
    }

    /// Descends through field 1 as far as the data goes, as a recursive
    /// schema-driven reader would.
    fn descend(reader: &mut Reader<'_>) -> DecodeResult<usize> {
        let mut deepest = reader.depth();
        while let Some(field) = reader.next_field()? {
            if field.number == 1 {
                let mut inner = reader.nested(bytes(&field)?)?;
                deepest = deepest.max(descend(&mut inner)?);
            }
        }
        Ok(deepest)
    }

    fn nest(levels: usize) -> Vec<u8> {
        let mut msg = Vec::new();
        for _ in 0..levels {
            let mut outer = vec![0x0a];
            outer.extend(encode_varint(msg.len() as u64));
            outer.extend(msg);
            msg = outer;
        }
        msg
    }

    #[test]
    fn nesting_is_bounded() {
        assert_eq!(
            descend(&mut Reader::new(&nest(MAX_DEPTH))).unwrap(),
            MAX_DEPTH
        );
        let err = descend(&mut Reader::new(&nest(MAX_DEPTH + 1))).unwrap_err();
        assert!(err.message.contains("nested deeper than 64"), "{err}");
        // Far deeper than any stack would survive unbounded.
        assert!(descend(&mut Reader::new(&nest(10_000))).is_err());
    }

    #[test]
    fn strings_must_be_utf8() {
        let f = Field {
            number: 1,
            value: Value::Bytes(&[0x61, 0xff]),
        };
        let err = string(&f).unwrap_err();
        assert!(err.message.contains("UTF-8"), "{err}");
    }
}
