//! Caffe's text format (`.prototxt`, protobuf's text encoding of a
//! `NetParameter`), turned into the binary encoding so that one reader serves
//! both: the fields the import uses are encoded with caffe.proto's numbers and
//! types (the tables below), every other field is parsed and dropped.
//!
//! Accepted syntax: `name: value`, `name { ... }`, `name: { ... }` and
//! `name < ... >` blocks, `name: [v1, v2]` lists, `#` comments, optional `,`
//! and `;` separators, single- or double-quoted strings (adjacent ones joined,
//! the usual backslash escapes), enum values by name or number.

use crate::{Error, Result};

/// The deepest nesting of blocks accepted (the parser recurses per block).
const MAX_DEPTH: usize = 64;

/// How a field's value is encoded.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    /// uint32 / uint64: a varint, negative values refused.
    Uint,
    /// int32 / int64: a varint, negative values as ten-byte two's complement.
    Int,
    Float,
    Bool,
    Enum(&'static [(&'static str, u64)]),
    Msg(&'static [FieldDef]),
}

struct FieldDef {
    name: &'static str,
    number: u32,
    kind: Kind,
}

const fn def(name: &'static str, number: u32, kind: Kind) -> FieldDef {
    FieldDef { name, number, kind }
}

use Kind::{Bool, Enum, Float, Int, Msg, Str, Uint};

// The field numbers and types of caffe.proto (see the table in caffe.rs).
const BLOB_SHAPE: &[FieldDef] = &[def("dim", 1, Int)];
const TRANSFORM: &[FieldDef] = &[def("crop_size", 3, Uint)];
const DATA: &[FieldDef] = &[def("crop_size", 5, Uint)];
const INPUT: &[FieldDef] = &[def("shape", 1, Msg(BLOB_SHAPE))];
const DROPOUT: &[FieldDef] = &[def("dropout_ratio", 1, Float)];
const RELU: &[FieldDef] = &[def("negative_slope", 1, Float)];
const CONV: &[FieldDef] = &[
    def("num_output", 1, Uint),
    def("bias_term", 2, Bool),
    def("pad", 3, Uint),
    def("kernel_size", 4, Uint),
    def("group", 5, Uint),
    def("stride", 6, Uint),
    def("pad_h", 9, Uint),
    def("pad_w", 10, Uint),
    def("kernel_h", 11, Uint),
    def("kernel_w", 12, Uint),
    def("stride_h", 13, Uint),
    def("stride_w", 14, Uint),
    def("dilation", 18, Uint),
];
const INNER_PRODUCT: &[FieldDef] = &[
    def("num_output", 1, Uint),
    def("bias_term", 2, Bool),
    def("axis", 5, Int),
    def("transpose", 6, Bool),
];
const NORM_REGION: &[(&str, u64)] = &[("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)];
const LRN: &[FieldDef] = &[
    def("local_size", 1, Uint),
    def("alpha", 2, Float),
    def("beta", 3, Float),
    def("norm_region", 4, Enum(NORM_REGION)),
    def("k", 5, Float),
];
const POOL_METHOD: &[(&str, u64)] = &[("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)];
const POOLING: &[FieldDef] = &[
    def("pool", 1, Enum(POOL_METHOD)),
    def("kernel_size", 2, Uint),
    def("stride", 3, Uint),
    def("pad", 4, Uint),
    def("kernel_h", 5, Uint),
    def("kernel_w", 6, Uint),
    def("stride_h", 7, Uint),
    def("stride_w", 8, Uint),
    def("pad_h", 9, Uint),
    def("pad_w", 10, Uint),
    def("global_pooling", 12, Bool),
];
const LAYER: &[FieldDef] = &[
    def("name", 1, Str),
    def("type", 2, Str),
    def("bottom", 3, Str),
    def("top", 4, Str),
    def("transform_param", 100, Msg(TRANSFORM)),
    def("convolution_param", 106, Msg(CONV)),
    def("data_param", 107, Msg(DATA)),
    def("dropout_param", 108, Msg(DROPOUT)),
    def("inner_product_param", 117, Msg(INNER_PRODUCT)),
    def("lrn_param", 118, Msg(LRN)),
    def("pooling_param", 121, Msg(POOLING)),
    def("relu_param", 123, Msg(RELU)),
    def("input_param", 143, Msg(INPUT)),
];
const V1_TYPES: &[(&str, u64)] = &[
    ("NONE", 0),
    ("ACCURACY", 1),
    ("BNLL", 2),
    ("CONCAT", 3),
    ("CONVOLUTION", 4),
    ("DATA", 5),
    ("DROPOUT", 6),
    ("EUCLIDEAN_LOSS", 7),
    ("FLATTEN", 8),
    ("HDF5_DATA", 9),
    ("HDF5_OUTPUT", 10),
    ("IM2COL", 11),
    ("IMAGE_DATA", 12),
    ("INFOGAIN_LOSS", 13),
    ("INNER_PRODUCT", 14),
    ("LRN", 15),
    ("MULTINOMIAL_LOGISTIC_LOSS", 16),
    ("POOLING", 17),
    ("RELU", 18),
    ("SIGMOID", 19),
    ("SOFTMAX", 20),
    ("SOFTMAX_LOSS", 21),
    ("SPLIT", 22),
    ("TANH", 23),
    ("WINDOW_DATA", 24),
    ("ELTWISE", 25),
    ("POWER", 26),
    ("SIGMOID_CROSS_ENTROPY_LOSS", 27),
    ("HINGE_LOSS", 28),
    ("MEMORY_DATA", 29),
    ("ARGMAX", 30),
    ("THRESHOLD", 31),
    ("DUMMY_DATA", 32),
    ("SLICE", 33),
    ("MVN", 34),
    ("ABSVAL", 35),
    ("SILENCE", 36),
    ("CONTRASTIVE_LOSS", 37),
    ("EXP", 38),
    ("DECONVOLUTION", 39),
];
const V1_LAYER: &[FieldDef] = &[
    def("bottom", 2, Str),
    def("top", 3, Str),
    def("name", 4, Str),
    def("type", 5, Enum(V1_TYPES)),
    def("convolution_param", 10, Msg(CONV)),
    def("data_param", 11, Msg(DATA)),
    def("dropout_param", 12, Msg(DROPOUT)),
    def("inner_product_param", 17, Msg(INNER_PRODUCT)),
    def("lrn_param", 18, Msg(LRN)),
    def("pooling_param", 19, Msg(POOLING)),
    def("relu_param", 30, Msg(RELU)),
    def("transform_param", 36, Msg(TRANSFORM)),
];
const NET: &[FieldDef] = &[
    def("name", 1, Str),
    def("layers", 2, Msg(V1_LAYER)),
    def("input", 3, Str),
    def("input_dim", 4, Int),
    def("input_shape", 8, Msg(BLOB_SHAPE)),
    def("layer", 100, Msg(LAYER)),
];

#[derive(Clone, Debug, PartialEq)]
enum Token<'t> {
    /// A field name, enum value, `true`/`false`, `inf`/`nan`.
    Word(&'t str),
    /// A number as written (sign included).
    Number(&'t str),
    Text(String),
    Punct(char),
}

struct Lexer<'t> {
    text: &'t str,
    pos: usize,
    line: usize,
    file: &'t str,
    peeked: Option<(Token<'t>, usize)>,
}

impl<'t> Lexer<'t> {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::format(self.file, format!("line {}: {message}", self.line))
    }

    fn peek(&mut self) -> Result<Option<&Token<'t>>> {
        if self.peeked.is_none() {
            let line = self.line;
            if let Some(token) = self.lex()? {
                self.peeked = Some((token, line));
            }
        }
        Ok(self.peeked.as_ref().map(|(t, _)| t))
    }

    fn next(&mut self) -> Result<Option<Token<'t>>> {
        self.peek()?;
        Ok(self.peeked.take().map(|(t, _)| t))
    }

    fn skip_space_and_comments(&mut self) {
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b'#' => {
                    while self.pos < bytes.len() && bytes[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                b if b.is_ascii_whitespace() => self.pos += 1,
                _ => return,
            }
        }
    }

    fn lex(&mut self) -> Result<Option<Token<'t>>> {
        self.skip_space_and_comments();
        let rest = &self.text[self.pos..];
        let Some(first) = rest.chars().next() else {
            return Ok(None);
        };
        let word_len = |s: &str| {
            s.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
                .unwrap_or(s.len())
        };
        let token = match first {
            '"' | '\'' => Token::Text(self.string(first)?),
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let len = 1 + word_len(&rest[1..]);
                self.pos += len;
                Token::Number(&rest[..len])
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                self.pos += len;
                Token::Word(&rest[..len])
            }
            '{' | '}' | '<' | '>' | '[' | ']' | ':' | ',' | ';' => {
                self.pos += 1;
                Token::Punct(first)
            }
            other => return Err(self.error(format!("unexpected character {other:?}"))),
        };
        Ok(Some(token))
    }

    /// A quoted string starting at `pos`, with the usual escapes.
    fn string(&mut self, quote: char) -> Result<String> {
        let start_line = self.line;
        let mut out = String::new();
        let mut chars = self.text[self.pos + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                _ if c == quote => {
                    self.pos += 1 + i + 1;
                    return Ok(out);
                }
                '\n' => break,
                '\\' => {
                    let Some((_, escaped)) = chars.next() else {
                        break;
                    };
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        Err(Error::format(
            self.file,
            format!("line {start_line}: a string without its closing quote"),
        ))
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, u64::from(number) << 3 | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes one scalar value of a known field.
fn scalar(out: &mut Vec<u8>, field: &FieldDef, token: Token<'_>, lex: &Lexer<'_>) -> Result<()> {
    let wrong = |what: &str| {
        lex.error(format!(
            "field '{}' takes {what}, found {}",
            field.name,
            shown(Some(&token))
        ))
    };
    match (field.kind, &token) {
        (Str, Token::Text(text)) => put_bytes(out, field.number, text.as_bytes()),
        (Uint, Token::Number(n)) => {
            let value = n.parse::<u64>().map_err(|_| wrong("an unsigned integer"))?;
            put_key(out, field.number, 0);
            put_varint(out, value);
        }
        (Int, Token::Number(n)) => {
            let value = n.parse::<i64>().map_err(|_| wrong("an integer"))?;
            put_key(out, field.number, 0);
            put_varint(out, value as u64);
        }
        (Float, Token::Number(n) | Token::Word(n)) => {
            let trimmed = n.trim_end_matches(['f', 'F']);
            let value = match trimmed {
                "inf" | "infinity" => f32::INFINITY,
                "-inf" | "-infinity" => f32::NEG_INFINITY,
                "nan" => f32::NAN,
                _ => trimmed.parse::<f32>().map_err(|_| wrong("a number"))?,
            };
            put_key(out, field.number, 5);
            out.extend_from_slice(&value.to_le_bytes());
        }
        (Bool, Token::Word(w) | Token::Number(w)) => {
            let value = match *w {
                "true" | "True" | "t" | "1" => 1,
                "false" | "False" | "f" | "0" => 0,
                _ => return Err(wrong("true or false")),
            };
            put_key(out, field.number, 0);
            put_varint(out, value);
        }
        (Enum(values), Token::Word(w)) => {
            let Some(&(_, value)) = values.iter().find(|(name, _)| name == w) else {
                let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
                return Err(wrong(&format!("one of {}", names.join(", "))));
            };
            put_key(out, field.number, 0);
            put_varint(out, value);
        }
        (Enum(_), Token::Number(n)) => {
            let value = n.parse::<u64>().map_err(|_| wrong("an enum value"))?;
            put_key(out, field.number, 0);
            put_varint(out, value);
        }
        (Msg(_), _) => return Err(wrong("a { ... } block")),
        _ => {
            let what = match field.kind {
                Str => "a quoted string",
                Uint | Int | Float => "a number",
                Bool => "true or false",
                Enum(_) => "an enum value",
                Msg(_) => unreachable!("handled above"),
            };
            return Err(wrong(what));
        }
    }
    Ok(())
}

/// A token as an error message shows it.
fn shown(token: Option<&Token<'_>>) -> String {
    match token {
        None => "the end of the text".to_string(),
        Some(Token::Word(w)) => format!("'{w}'"),
        Some(Token::Number(n)) => format!("the number {n}"),
        Some(Token::Text(t)) => format!("the string {t:?}"),
        Some(Token::Punct(c)) => format!("'{c}'"),
    }
}

fn is_value(token: &Token<'_>) -> bool {
    !matches!(token, Token::Punct(_))
}

/// The next value token, joining adjacent strings.
fn value<'t>(lex: &mut Lexer<'t>, name: &str) -> Result<Token<'t>> {
    match lex.next()? {
        Some(Token::Text(mut text)) => {
            while let Some(Token::Text(_)) = lex.peek()? {
                if let Some(Token::Text(more)) = lex.next()? {
                    text.push_str(&more);
                }
            }
            Ok(Token::Text(text))
        }
        Some(token) if is_value(&token) => Ok(token),
        other => Err(lex.error(format!(
            "expected a value for '{name}', found {}",
            shown(other.as_ref())
        ))),
    }
}

/// Parses the fields of one message up to `close` (or the end of the text at
/// the top level), appending the known ones to `out` in the binary encoding.
/// `schema` is `None` inside fields the import does not use: they are parsed
/// for their syntax and dropped.
fn message(
    lex: &mut Lexer<'_>,
    schema: Option<&[FieldDef]>,
    close: Option<char>,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    loop {
        let name = match lex.next()? {
            None if close.is_none() => return Ok(()),
            None => {
                return Err(lex.error(format!(
                    "the text ends before a closing '{}'",
                    close.unwrap_or('}')
                )));
            }
            Some(Token::Punct(c)) if Some(c) == close => return Ok(()),
            Some(Token::Punct(',' | ';')) => continue,
            Some(Token::Word(name)) => name,
            Some(other) => {
                return Err(lex.error(format!(
                    "expected a field name, found {}",
                    shown(Some(&other))
                )));
            }
        };
        let field = schema.and_then(|s| s.iter().find(|f| f.name == name));
        let mut colon = false;
        if lex.peek()? == Some(&Token::Punct(':')) {
            lex.next()?;
            colon = true;
        }
        match lex.peek()? {
            Some(Token::Punct(open @ ('{' | '<'))) => {
                let close = if *open == '{' { '}' } else { '>' };
                lex.next()?;
                if depth + 1 > MAX_DEPTH {
                    return Err(lex.error(format!("blocks nested deeper than {MAX_DEPTH}")));
                }
                let inner_schema = match field.map(|f| f.kind) {
                    Some(Msg(inner)) => Some(inner),
                    Some(_) => return Err(lex.error(format!("field '{name}' is not a message"))),
                    None => None,
                };
                let mut inner = Vec::new();
                message(lex, inner_schema, Some(close), depth + 1, &mut inner)?;
                if let Some(field) = field {
                    put_bytes(out, field.number, &inner);
                }
            }
            Some(Token::Punct('[')) if colon => {
                lex.next()?;
                loop {
                    let token = value(lex, name)?;
                    if let Some(field) = field {
                        scalar(out, field, token, lex)?;
                    }
                    match lex.next()? {
                        Some(Token::Punct(',')) => continue,
                        Some(Token::Punct(']')) => break,
                        other => {
                            return Err(lex.error(format!(
                                "expected ',' or ']' in the list of '{name}', found {}",
                                shown(other.as_ref())
                            )));
                        }
                    }
                }
            }
            _ if colon => {
                let token = value(lex, name)?;
                if let Some(field) = field {
                    scalar(out, field, token, lex)?;
                }
            }
            other => {
                let found = shown(other);
                return Err(lex.error(format!(
                    "expected ':' or a block after '{name}', found {found}"
                )));
            }
        }
    }
}

/// The binary `NetParameter` encoding of a prototxt's text.
pub(super) fn to_binary(text: &str, file: &str) -> Result<Vec<u8>> {
    let mut lex = Lexer {
        text,
        pos: 0,
        line: 1,
        file,
        peeked: None,
    };
    let mut out = Vec::new();
    message(&mut lex, Some(NET), None, 0, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto_read::{self as pb, Reader};

    fn fields(bytes: &[u8]) -> Vec<(u32, pb::Value<'_>)> {
        let mut reader = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(f) = reader.next_field().unwrap() {
            out.push((f.number, f.value));
        }
        out
    }

    #[test]
    fn scalars_blocks_lists_and_comments() {
        let text = "name: 'Alex' \"Net\"  # a comment\ninput_dim: [1, 3, 227, 227]\n\
                    layer < name: \"p\" pooling_param: { pool: AVE kernel_size: 3 } >\n\
                    layer { lrn_param { alpha: 1e-4 norm_region: WITHIN_CHANNEL } };";
        let bytes = to_binary(text, "t").unwrap();
        let top = fields(&bytes);
        assert_eq!(top[0], (1, pb::Value::Bytes(b"AlexNet")));
        let dims: Vec<_> = top[1..5].iter().map(|(n, v)| (*n, *v)).collect();
        assert_eq!(dims[3], (4, pb::Value::Varint(227)));
        let pb::Value::Bytes(layer) = top[5].1 else {
            panic!()
        };
        let layer = fields(layer);
        assert_eq!(layer[0], (1, pb::Value::Bytes(b"p")));
        let pb::Value::Bytes(pool) = layer[1].1 else {
            panic!()
        };
        assert_eq!(
            fields(pool),
            [(1, pb::Value::Varint(1)), (2, pb::Value::Varint(3))]
        );
        let pb::Value::Bytes(layer) = top[6].1 else {
            panic!()
        };
        let pb::Value::Bytes(lrn) = fields(layer)[0].1 else {
            panic!()
        };
        assert_eq!(
            fields(lrn),
            [
                (2, pb::Value::Fixed32(1e-4f32.to_bits())),
                (4, pb::Value::Varint(1))
            ]
        );
    }

    #[test]
    fn unknown_fields_are_parsed_and_dropped() {
        let text = "layer { name: 'c' param { lr_mult: 1 } convolution_param { num_output: 2 \
                    weight_filler { type: 'gaussian' std: 0.01 } } include { phase: TEST } }";
        let bytes = to_binary(text, "t").unwrap();
        let pb::Value::Bytes(layer) = fields(&bytes)[0].1 else {
            panic!()
        };
        let layer = fields(layer);
        assert_eq!(layer.len(), 2);
        let pb::Value::Bytes(conv) = layer[1].1 else {
            panic!()
        };
        assert_eq!(fields(conv), [(1, pb::Value::Varint(2))]);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("name: 'x'\nlayer { name: 'a'", "line 2", "closing '}'"),
            ("layer {\n  type: Convolution }", "line 2", "quoted string"),
            (
                "layer { convolution_param { num_output: -3 } }",
                "line 1",
                "unsigned",
            ),
            ("name 'x'", "line 1", "expected ':'"),
            ("name: 'x", "line 1", "closing quote"),
            (
                "layer { lrn_param { norm_region: SIDEWAYS } }",
                "line 1",
                "ACROSS_CHANNELS",
            ),
            (
                "input_dim: [1, 2",
                "line 1",
                "',' or ']' in the list of 'input_dim', found the end",
            ),
            ("name: 'x' ?", "line 1", "unexpected character"),
            ("name { }", "line 1", "not a message"),
            ("layer: 3", "line 1", "block"),
        ];
        for (text, line, words) in cases {
            let err = to_binary(text, "net.prototxt").unwrap_err().to_string();
            assert!(
                err.contains("net.prototxt") && err.contains(line),
                "{text}: {err}"
            );
            assert!(err.contains(words), "{text}: {err}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "a { ".repeat(100_000);
        let err = to_binary(&deep, "t").unwrap_err().to_string();
        assert!(err.contains("nested deeper than 64"), "{err}");
    }
}
