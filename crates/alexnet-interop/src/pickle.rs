//! A restricted unpickler: reads the pickles `torch.save` writes for a state_dict
//! (protocols 2 to 5) into a small value model, and executes nothing.
//!
//! Python's unpickler imports and calls whatever the pickle names, which makes a
//! `.pth` file a program. Here a global is only a marker ([`Global`]), accepted
//! from a short list of what a state_dict needs (an `OrderedDict`, torch's tensor
//! rebuilders and typed storage classes); any other global is refused by name
//! before anything else happens. "Calling" an accepted global (REDUCE) records
//! the call ([`Value::Call`]); [`crate::torch`] interprets it.
//!
//! Hostile input: every declared length is checked against the bytes left before
//! anything is allocated; the stack, the memo and MARK nesting are bounded, and so
//! are the nesting and total size of the returned tree (shared references could
//! otherwise make it exponentially large, or cyclic).
//!
//! Containers live in an arena while the pickle runs, so that the memo shares
//! them as Python does: a list stored in the memo and appended to afterwards is
//! seen with its items when the memo is read back. The tree is built from the
//! arena at STOP.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Nesting allowed: of MARKs while reading, and of containers in the result.
pub const MAX_DEPTH: usize = 64;
/// Items allowed on the stack at once.
pub const MAX_STACK: usize = 1 << 18;
/// Entries allowed in the memo.
pub const MAX_MEMO: usize = 1 << 18;

/// A global the pickle may name: the only ones a state_dict needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict` (what `state_dict()` returns).
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)` (and `_with_state`).
    RebuildParameter,
    /// A typed storage class, `torch.FloatStorage` etc., by its class name.
    Storage(&'static str),
}

/// The typed storage classes torch pickles a tensor's storage as.
pub const STORAGE_CLASSES: &[&str] = &[
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "ComplexFloatStorage",
    "ComplexDoubleStorage",
];

impl Global {
    /// The global `module.name` if it is one a state_dict needs.
    pub fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Some(Global::RebuildParameter)
            }
            ("torch", _) => STORAGE_CLASSES
                .iter()
                .find(|&&class| class == name)
                .map(|&class| Global::Storage(class)),
            _ => None,
        }
    }

    /// The qualified Python name, for messages.
    pub fn qualified_name(&self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::Storage(class) => format!("torch.{class}"),
        }
    }
}

/// What a pickle evaluates to, with nothing executed.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Integers up to 128 bits (LONG1 up to 16 bytes; torch's legacy magic number needs 10).
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or `OrderedDict`, entries in insertion order (a repeated key keeps
    /// its first position and takes the last value, as in Python).
    Dict(Vec<(Value, Value)>),
    /// An accepted global, not called.
    Global(Global),
    /// An accepted global applied to arguments (REDUCE), with the state BUILD gave it.
    Call {
        callee: Global,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// What BINPERSID names: torch's reference to a storage, resolved by the caller.
    PersistentId(Box<Value>),
}

impl Value {
    /// What kind of value this is, for messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(items) => format!("a tuple of {}", items.len()),
            Value::List(items) => format!("a list of {}", items.len()),
            Value::Dict(entries) => format!("a dict of {} entries", entries.len()),
            Value::Global(g) => format!("the global {}", g.qualified_name()),
            Value::Call { callee, .. } => format!("a call of {}", callee.qualified_name()),
            Value::PersistentId(_) => "a persistent id".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_sequence(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(items) | Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value under the string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Runs the pickle that starts at `data[0]` up to its STOP; returns its value and
/// the number of bytes it took (torch's legacy format is several pickles in a
/// row). `file` names the pickle in errors.
pub fn load(data: &[u8], file: &str) -> Result<(Value, usize)> {
    let mut machine = Machine {
        data,
        file,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Vec::new(),
    };
    let root = machine.run()?;
    // Shared subtrees are copied once per reference: bound the total by the size
    // of the pickle (not of `data`, which may run on into tensor data).
    let mut budget = 16 * machine.pos + (1 << 16);
    let value = machine.build(root, 0, &mut budget)?;
    Ok((value, machine.pos))
}

/// A stack item: scalars inline, everything else an index into the arena (so a
/// memo read is a copy of an index, and containers are shared like Python's).
#[derive(Clone, Copy, Debug)]
enum Item {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Global(Global),
    Node(usize),
}

#[derive(Debug)]
enum Node {
    Str(String),
    Bytes(Vec<u8>),
    /// Integers beyond 64 bits (LONG1).
    BigInt(i128),
    Tuple(Vec<Item>),
    List(Vec<Item>),
    Dict(Box<DictNode>),
    Call(Box<CallNode>),
    PersistentId(Item),
}

#[derive(Debug, Default)]
struct DictNode {
    entries: Vec<(Item, Item)>,
    /// Where each key is in `entries`.
    positions: HashMap<DictKey, usize>,
}

#[derive(Debug)]
struct CallNode {
    callee: Global,
    args: Vec<Item>,
    state: Option<Item>,
}

impl Node {
    fn empty_dict() -> Node {
        Node::Dict(Box::default())
    }
}

struct Machine<'a> {
    data: &'a [u8],
    file: &'a str,
    pos: usize,
    stack: Vec<Item>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    arena: Vec<Node>,
}

mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const LIST: u8 = b'l';
    pub const DICT: u8 = b'd';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
}

/// Python's name of a pickle opcode we do not accept, for the error message.
fn unsupported_opcode_name(code: u8) -> Option<&'static str> {
    Some(match code {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

impl Machine<'_> {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::format(self.file, format!("pickle: {message}"))
    }

    /// Takes the next `n` bytes, or fails naming what was being read.
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(self.error(format!(
                "{what} at byte {} declares {n} bytes but only {left} remain (truncated or corrupt)",
                self.pos
            )));
        }
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().unwrap())
    }

    /// A length stored in `width` little-endian bytes, checked against the bytes left.
    fn take_length(&mut self, width: usize, what: &str) -> Result<usize> {
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(self.take(width, what)?);
        let n = u64::from_le_bytes(raw);
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(self.error(format!(
                "{what} at byte {} declares {n} bytes but only {left} remain (truncated or corrupt)",
                // Where the opcode is: the length follows it.
                self.pos - width - 1
            )));
        }
        Ok(n as usize)
    }

    /// A newline-terminated line (GLOBAL's operands), of bounded length.
    fn take_line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error(format!("GLOBAL at byte {} has no end of line", self.pos)))?;
        let line = String::from_utf8(rest[..end].to_vec())
            .map_err(|_| self.error("GLOBAL names a module or name that is not UTF-8"))?;
        self.pos += end + 1;
        Ok(line)
    }

    fn push(&mut self, item: Item) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.error(format!("more than {MAX_STACK} items on the stack")));
        }
        self.stack.push(item);
        Ok(())
    }

    fn push_node(&mut self, node: Node) -> Result<()> {
        self.arena.push(node);
        self.push(Item::Node(self.arena.len() - 1))
    }

    /// The bottom of the stack visible now: items below the last MARK are not.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, opcode: &str) -> Result<Item> {
        if self.stack.len() <= self.floor() {
            return Err(self.error(format!(
                "{opcode} at byte {} finds the stack empty",
                self.pos - 1
            )));
        }
        Ok(self.stack.pop().unwrap())
    }

    fn top(&self, opcode: &str) -> Result<Item> {
        if self.stack.len() <= self.floor() {
            return Err(self.error(format!(
                "{opcode} at byte {} finds the stack empty",
                self.pos - 1
            )));
        }
        Ok(*self.stack.last().unwrap())
    }

    /// The items pushed since the last MARK, which is closed.
    fn pop_mark(&mut self, opcode: &str) -> Result<Vec<Item>> {
        let mark = self.marks.pop().ok_or_else(|| {
            self.error(format!("{opcode} at byte {} without a MARK", self.pos - 1))
        })?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32, item: Item) -> Result<()> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(self.error(format!("more than {MAX_MEMO} memo entries")));
        }
        self.memo.insert(key, item);
        Ok(())
    }

    fn memo_get(&self, key: u32) -> Result<Item> {
        self.memo.get(&key).copied().ok_or_else(|| {
            self.error(format!(
                "byte {} reads memo entry {key}, which was never stored",
                self.pos
            ))
        })
    }

    /// Runs opcodes up to STOP and returns the value on top of the stack.
    fn run(&mut self) -> Result<Item> {
        loop {
            let at = self.pos;
            let [code] = self.take_array::<1>("an opcode")?;
            if code == op::STOP {
                return self.pop("STOP");
            }
            self.step(code, at)?;
        }
    }

    fn step(&mut self, code: u8, at: usize) -> Result<()> {
        match code {
            op::PROTO => {
                let [version] = self.take_array::<1>("PROTO")?;
                if !(2..=5).contains(&version) {
                    return Err(self.error(format!(
                        "protocol {version} at byte {at}; only protocols 2 to 5 are read"
                    )));
                }
            }
            // A frame only groups opcodes for buffered reading; its length must fit.
            op::FRAME => {
                self.take_length(8, "FRAME")?;
            }
            op::MARK => {
                if self.marks.len() >= MAX_DEPTH {
                    return Err(
                        self.error(format!("MARKs nested deeper than {MAX_DEPTH} at byte {at}"))
                    );
                }
                self.marks.push(self.stack.len());
            }
            op::POP => {
                self.pop("POP")?;
            }
            op::POP_MARK => {
                self.pop_mark("POP_MARK")?;
            }
            op::DUP => {
                let top = self.top("DUP")?;
                self.push(top)?;
            }
            _ => return self.step_value(code, at),
        }
        Ok(())
    }

    /// Opcodes that push scalars, strings and containers.
    fn step_value(&mut self, code: u8, at: usize) -> Result<()> {
        match code {
            op::NONE => self.push(Item::None),
            op::NEWTRUE => self.push(Item::Bool(true)),
            op::NEWFALSE => self.push(Item::Bool(false)),
            op::BININT => {
                let v = i32::from_le_bytes(self.take_array("BININT")?);
                self.push(Item::Int(v.into()))
            }
            op::BININT1 => {
                let [v] = self.take_array::<1>("BININT1")?;
                self.push(Item::Int(v.into()))
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.take_array("BININT2")?);
                self.push(Item::Int(v.into()))
            }
            op::LONG1 => self.long1(at),
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.take_array("BINFLOAT")?);
                self.push(Item::Float(v))
            }
            op::SHORT_BINUNICODE => self.unicode(1, "SHORT_BINUNICODE"),
            op::BINUNICODE => self.unicode(4, "BINUNICODE"),
            op::BINUNICODE8 => self.unicode(8, "BINUNICODE8"),
            op::SHORT_BINBYTES => self.bytes(1, "SHORT_BINBYTES"),
            op::BINBYTES => self.bytes(4, "BINBYTES"),
            op::BINBYTES8 => self.bytes(8, "BINBYTES8"),
            op::SHORT_BINSTRING => self.string(1, "SHORT_BINSTRING"),
            op::BINSTRING => self.string(4, "BINSTRING"),
            op::EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new())),
            op::EMPTY_LIST => self.push_node(Node::List(Vec::new())),
            op::EMPTY_DICT => self.push_node(Node::empty_dict()),
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                let mut items = (0..n)
                    .map(|_| self.pop("TUPLE1-3"))
                    .collect::<Result<Vec<_>>>()?;
                items.reverse();
                self.push_node(Node::Tuple(items))
            }
            op::TUPLE => {
                let items = self.pop_mark("TUPLE")?;
                self.push_node(Node::Tuple(items))
            }
            op::LIST => {
                let items = self.pop_mark("LIST")?;
                self.push_node(Node::List(items))
            }
            op::DICT => {
                let items = self.pop_mark("DICT")?;
                self.push_node(Node::empty_dict())?;
                let dict = self.top("DICT")?;
                self.set_items(dict, items, "DICT")
            }
            _ => self.step_structure(code, at),
        }
    }

    /// Opcodes that change containers, use the memo, or name and call globals.
    fn step_structure(&mut self, code: u8, at: usize) -> Result<()> {
        match code {
            op::APPEND => {
                let item = self.pop("APPEND")?;
                let list = self.top("APPEND")?;
                self.append(list, vec![item])
            }
            op::APPENDS => {
                let items = self.pop_mark("APPENDS")?;
                let list = self.top("APPENDS")?;
                self.append(list, items)
            }
            op::SETITEM => {
                let value = self.pop("SETITEM")?;
                let key = self.pop("SETITEM")?;
                let dict = self.top("SETITEM")?;
                self.set_items(dict, vec![key, value], "SETITEM")
            }
            op::SETITEMS => {
                let items = self.pop_mark("SETITEMS")?;
                let dict = self.top("SETITEMS")?;
                self.set_items(dict, items, "SETITEMS")
            }
            op::BINPUT => {
                let [key] = self.take_array::<1>("BINPUT")?;
                let top = self.top("BINPUT")?;
                self.memo_put(key as u32, top)
            }
            op::LONG_BINPUT => {
                let key = u32::from_le_bytes(self.take_array("LONG_BINPUT")?);
                let top = self.top("LONG_BINPUT")?;
                self.memo_put(key, top)
            }
            op::MEMOIZE => {
                let key = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                let top = self.top("MEMOIZE")?;
                self.memo_put(key, top)
            }
            op::BINGET => {
                let [key] = self.take_array::<1>("BINGET")?;
                let item = self.memo_get(key as u32)?;
                self.push(item)
            }
            op::LONG_BINGET => {
                let key = u32::from_le_bytes(self.take_array("LONG_BINGET")?);
                let item = self.memo_get(key)?;
                self.push(item)
            }
            op::GLOBAL => {
                let module = self.take_line()?;
                let name = self.take_line()?;
                self.global(&module, &name)
            }
            op::STACK_GLOBAL => {
                let name = self.pop("STACK_GLOBAL")?;
                let module = self.pop("STACK_GLOBAL")?;
                let (Some(module), Some(name)) = (self.string_of(module), self.string_of(name))
                else {
                    return Err(self.error(format!(
                        "STACK_GLOBAL at byte {at} takes a module and a name that are not strings"
                    )));
                };
                self.global(&module, &name)
            }
            op::REDUCE => self.reduce(at),
            op::BUILD => self.build_state(at),
            op::BINPERSID => {
                let id = self.pop("BINPERSID")?;
                self.push_node(Node::PersistentId(id))
            }
            _ => Err(self.unknown_opcode(code, at)),
        }
    }

    fn unknown_opcode(&self, code: u8, at: usize) -> Error {
        match unsupported_opcode_name(code) {
            Some(name) => self.error(format!(
                "opcode {name} (0x{code:02x}) at byte {at}, which a state_dict never needs; refusing to load"
            )),
            None => self.error(format!(
                "unknown opcode 0x{code:02x} at byte {at} (not a pickle, or corrupt)"
            )),
        }
    }

    fn long1(&mut self, at: usize) -> Result<()> {
        let n = self.take_length(1, "LONG1")?;
        if n > 16 {
            return Err(self.error(format!(
                "LONG1 at byte {at} is an integer of {n} bytes; at most 16 are read"
            )));
        }
        let bytes = self.take(n, "LONG1")?;
        // Little-endian two's complement: sign-extend from the top byte.
        let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
            0xFF
        } else {
            0
        };
        let mut raw = [fill; 16];
        raw[..n].copy_from_slice(bytes);
        let value = i128::from_le_bytes(raw);
        match i64::try_from(value) {
            Ok(small) => self.push(Item::Int(small)),
            Err(_) => self.push_node(Node::BigInt(value)),
        }
    }

    fn unicode(&mut self, width: usize, what: &str) -> Result<()> {
        let n = self.take_length(width, what)?;
        let at = self.pos;
        let text = std::str::from_utf8(self.take(n, what)?).map(str::to_string);
        let text = text.map_err(|_| self.error(format!("{what} at byte {at} is not UTF-8")))?;
        self.push_node(Node::Str(text))
    }

    fn bytes(&mut self, width: usize, what: &str) -> Result<()> {
        let n = self.take_length(width, what)?;
        let bytes = self.take(n, what)?.to_vec();
        self.push_node(Node::Bytes(bytes))
    }

    /// Python 2's `str` (old files): text when it is UTF-8, bytes otherwise.
    fn string(&mut self, width: usize, what: &str) -> Result<()> {
        let n = self.take_length(width, what)?;
        let bytes = self.take(n, what)?.to_vec();
        match String::from_utf8(bytes) {
            Ok(text) => self.push_node(Node::Str(text)),
            Err(e) => self.push_node(Node::Bytes(e.into_bytes())),
        }
    }

    fn string_of(&self, item: Item) -> Option<String> {
        match item {
            Item::Node(i) => match &self.arena[i] {
                Node::Str(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(global) => self.push(Item::Global(global)),
            None => Err(refused_global(self.file, module, name)),
        }
    }

    /// `callee(*args)`: an empty `OrderedDict()` becomes a dict that SETITEMS fills;
    /// torch's rebuilders are recorded as calls for the caller to interpret.
    fn reduce(&mut self, at: usize) -> Result<()> {
        let args = self.pop("REDUCE")?;
        let callee = self.pop("REDUCE")?;
        let Item::Global(callee) = callee else {
            return Err(self.error(format!(
                "REDUCE at byte {at} calls something that is not a global"
            )));
        };
        let args = match args {
            Item::Node(i) => match &self.arena[i] {
                Node::Tuple(items) => Some(items.clone()),
                _ => None,
            },
            _ => None,
        };
        let Some(args) = args else {
            return Err(self.error(format!(
                "REDUCE at byte {at} calls {} with arguments that are not a tuple",
                callee.qualified_name()
            )));
        };
        match callee {
            Global::OrderedDict if args.is_empty() => self.push_node(Node::empty_dict()),
            Global::OrderedDict => Err(self.error(format!(
                "REDUCE at byte {at} builds an OrderedDict from arguments; torch.save gives it none"
            ))),
            _ => self.push_node(Node::Call(Box::new(CallNode {
                callee,
                args,
                state: None,
            }))),
        }
    }

    /// BUILD sets an object's state: kept on a recorded call; on a dict it is
    /// attributes (torch's `_metadata` of module versions), which nothing here needs.
    fn build_state(&mut self, at: usize) -> Result<()> {
        let state = self.pop("BUILD")?;
        let target = self.top("BUILD")?;
        let Item::Node(index) = target else {
            return Err(self.error(format!("BUILD at byte {at} sets the state of a scalar")));
        };
        match &mut self.arena[index] {
            Node::Call(call) => call.state = Some(state),
            Node::Dict(_) => {}
            _ => {
                return Err(self.error(format!(
                    "BUILD at byte {at} sets the state of a built-in value"
                )));
            }
        }
        Ok(())
    }

    fn append(&mut self, list: Item, items: Vec<Item>) -> Result<()> {
        let at = self.pos - 1;
        if let Item::Node(index) = list
            && let Node::List(existing) = &mut self.arena[index]
        {
            existing.extend(items);
            return Ok(());
        }
        Err(self.error(format!("APPEND(S) at byte {at} onto something not a list")))
    }

    /// Python's `dict[key] = value` for each pair: a new key goes last, a repeated
    /// key keeps its place and takes the new value.
    fn set_items(&mut self, dict: Item, items: Vec<Item>, opcode: &str) -> Result<()> {
        let at = self.pos - 1;
        if !items.len().is_multiple_of(2) {
            return Err(self.error(format!(
                "{opcode} at byte {at} with an odd number of items (a key without a value)"
            )));
        }
        let keys = items
            .chunks_exact(2)
            .map(|pair| self.key_of(pair[0]))
            .collect::<Result<Vec<_>>>()?;
        let Item::Node(index) = dict else {
            return Err(self.error(format!("{opcode} at byte {at} into something not a dict")));
        };
        let Node::Dict(dict) = &mut self.arena[index] else {
            return Err(self.error(format!("{opcode} at byte {at} into something not a dict")));
        };
        let DictNode { entries, positions } = &mut **dict;
        for (key, pair) in keys.into_iter().zip(items.chunks_exact(2)) {
            match positions.get(&key) {
                Some(&p) => entries[p].1 = pair[1],
                None => {
                    positions.insert(key, entries.len());
                    entries.push((pair[0], pair[1]));
                }
            }
        }
        Ok(())
    }

    /// A dict key as a comparable value: only strings, bytes, ints, bools and None
    /// are accepted as keys (a state_dict's keys are strings).
    fn key_of(&self, item: Item) -> Result<DictKey> {
        let key = match item {
            Item::None => Some(DictKey::None),
            // In Python True == 1, so they are one key.
            Item::Bool(b) => Some(DictKey::Int(b.into())),
            Item::Int(i) => Some(DictKey::Int(i.into())),
            Item::Node(i) => match &self.arena[i] {
                Node::Str(s) => Some(DictKey::Str(s.clone())),
                Node::Bytes(b) => Some(DictKey::Bytes(b.clone())),
                Node::BigInt(i) => Some(DictKey::Int(*i)),
                _ => None,
            },
            _ => None,
        };
        key.ok_or_else(|| self.error("a dict key that is not a string, bytes or an int"))
    }

    /// Turns an item into an owned tree, bounding its nesting (which also stops
    /// cycles) and its total size (which stops shared references from multiplying).
    fn build(&self, item: Item, depth: usize, budget: &mut usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!(
                "values nested deeper than {MAX_DEPTH} levels (or a container that contains itself)"
            )));
        }
        let index = match item {
            Item::None => return Ok(Value::None),
            Item::Bool(b) => return Ok(Value::Bool(b)),
            Item::Int(i) => return Ok(Value::Int(i.into())),
            Item::Float(f) => return Ok(Value::Float(f)),
            Item::Global(g) => return Ok(Value::Global(g)),
            Item::Node(index) => index,
        };
        let node = &self.arena[index];
        let cost = 1 + match node {
            Node::Str(s) => s.len(),
            Node::Bytes(b) => b.len(),
            Node::Tuple(items) | Node::List(items) => items.len(),
            Node::BigInt(_) => 0,
            Node::Dict(dict) => 2 * dict.entries.len(),
            Node::Call(call) => call.args.len() + 1,
            Node::PersistentId(_) => 1,
        };
        *budget = budget.checked_sub(cost).ok_or_else(|| {
            self.error("the value is far larger than the pickle (shared references multiplying); refusing to expand it")
        })?;
        let all = |items: &[Item], budget: &mut usize| {
            items
                .iter()
                .map(|&i| self.build(i, depth + 1, budget))
                .collect::<Result<Vec<_>>>()
        };
        Ok(match node {
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::Tuple(items) => Value::Tuple(all(items, budget)?),
            Node::List(items) => Value::List(all(items, budget)?),
            Node::BigInt(i) => Value::Int(*i),
            Node::Dict(dict) => Value::Dict(
                dict.entries
                    .iter()
                    .map(|&(k, v)| {
                        Ok((
                            self.build(k, depth + 1, budget)?,
                            self.build(v, depth + 1, budget)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Node::Call(call) => Value::Call {
                callee: call.callee,
                args: all(&call.args, budget)?,
                state: match call.state {
                    Some(s) => Some(Box::new(self.build(s, depth + 1, budget)?)),
                    None => None,
                },
            },
            Node::PersistentId(id) => {
                Value::PersistentId(Box::new(self.build(*id, depth + 1, budget)?))
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum DictKey {
    None,
    Int(i128),
    Str(String),
    Bytes(Vec<u8>),
}

/// The error for a global outside the list, naming it, with a hint when it looks
/// like a whole pickled model rather than its state_dict.
fn refused_global(file: &str, module: &str, name: &str) -> Error {
    let whole_model =
        module == "__main__" || module.starts_with("torch.nn") || module.starts_with("torchvision");
    let hint = if whole_model {
        " (a whole pickled model? save model.state_dict() instead)"
    } else if module.starts_with("torch") {
        " (a tensor of a kind this reader does not handle: sparse, quantized, a subclass or an integer dtype beyond the usual?)"
    } else {
        ""
    };
    Error::format(
        file,
        format!(
            "pickle calls the global {module}.{name}, which a state_dict never needs; refusing to load{hint}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value> {
        load(bytes, "t.pkl").map(|(v, _)| v)
    }

    fn err(bytes: &[u8]) -> String {
        run(bytes).unwrap_err().to_string()
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    /// SHORT_BINUNICODE of `text`.
    fn unicode(text: &str) -> Vec<u8> {
        let mut out = vec![op::SHORT_BINUNICODE, text.len() as u8];
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn pickle(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![op::PROTO, 2];
        for p in parts {
            out.extend_from_slice(p);
        }
        out.push(op::STOP);
        out
    }

    #[test]
    fn scalars() {
        assert_eq!(run(&pickle(&[b"N"])).unwrap(), Value::None);
        assert_eq!(run(&pickle(&[&[op::NEWTRUE]])).unwrap(), Value::Bool(true));
        assert_eq!(
            run(&pickle(&[&[op::NEWFALSE]])).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(run(&pickle(&[b"K\xff"])).unwrap(), Value::Int(255));
        assert_eq!(run(&pickle(&[b"M\x01\x02"])).unwrap(), Value::Int(0x0201));
        assert_eq!(
            run(&pickle(&[b"J\xfe\xff\xff\xff"])).unwrap(),
            Value::Int(-2)
        );
        assert_eq!(
            run(&pickle(&[b"G?\xf8\x00\x00\x00\x00\x00\x00"])).unwrap(),
            Value::Float(1.5)
        );
        assert_eq!(run(&pickle(&[&unicode("héllo")])).unwrap(), s("héllo"));
        assert_eq!(run(&pickle(&[b"X\x02\x00\x00\x00ab"])).unwrap(), s("ab"));
        assert_eq!(
            run(&pickle(&[b"\x8d\x01\x00\x00\x00\x00\x00\x00\x00z"])).unwrap(),
            s("z")
        );
        assert_eq!(
            run(&pickle(&[b"C\x02\x00\x01"])).unwrap(),
            Value::Bytes(vec![0, 1])
        );
        assert_eq!(
            run(&pickle(&[b"B\x01\x00\x00\x00\x07"])).unwrap(),
            Value::Bytes(vec![7])
        );
        assert_eq!(run(&pickle(&[b"U\x02ok"])).unwrap(), s("ok"));
        assert_eq!(
            run(&pickle(&[b"T\x01\x00\x00\x00\xff"])).unwrap(),
            Value::Bytes(vec![0xff])
        );
    }

    #[test]
    fn long1_is_little_endian_twos_complement() {
        assert_eq!(run(&pickle(&[b"\x8a\x00"])).unwrap(), Value::Int(0));
        assert_eq!(run(&pickle(&[b"\x8a\x01\xff"])).unwrap(), Value::Int(-1));
        assert_eq!(
            run(&pickle(&[b"\x8a\x02\x00\x80"])).unwrap(),
            Value::Int(-32768)
        );
        assert_eq!(
            run(&pickle(&[b"\x8a\x02\xff\x00"])).unwrap(),
            Value::Int(255)
        );
        // torch's legacy magic number.
        let magic = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
        assert_eq!(
            run(&pickle(&[magic])).unwrap(),
            Value::Int(0x1950a86a20f9469cfc6c)
        );
        let too_long = [&[0x8a, 17][..], &[0; 17]].concat();
        assert!(err(&pickle(&[&too_long])).contains("17 bytes"));
    }

    #[test]
    fn containers_and_marks() {
        let tuples =
            pickle(&[b")K\x01\x85K\x01K\x02\x86K\x01K\x02K\x03\x87(K\x01K\x02K\x03K\x04t\x87"]);
        let one = || Value::Int(1);
        assert_eq!(
            run(&tuples).unwrap(),
            Value::Tuple(vec![
                Value::Tuple(vec![one(), Value::Int(2)]),
                Value::Tuple(vec![one(), Value::Int(2), Value::Int(3)]),
                Value::Tuple(vec![one(), Value::Int(2), Value::Int(3), Value::Int(4)]),
            ])
        );
        let list = pickle(&[b"]K\x01a(K\x02K\x03e"]);
        assert_eq!(
            run(&list).unwrap(),
            Value::List(vec![one(), Value::Int(2), Value::Int(3)])
        );
        assert_eq!(
            run(&pickle(&[b"(K\x01K\x02l"])).unwrap(),
            Value::List(vec![one(), Value::Int(2)])
        );
        let dict = pickle(&[
            b"(",
            &unicode("a"),
            b"K\x01d",
            &unicode("b"),
            b"K\x02s(",
            &unicode("a"),
            b"K\x03u",
        ]);
        assert_eq!(
            run(&dict).unwrap(),
            Value::Dict(vec![(s("a"), Value::Int(3)), (s("b"), Value::Int(2))])
        );
        // POP, POP_MARK and DUP.
        assert_eq!(run(&pickle(&[b"K\x01K\x020"])).unwrap(), one());
        assert_eq!(run(&pickle(&[b"K\x01(K\x02K\x031"])).unwrap(), one());
        assert_eq!(
            run(&pickle(&[b"K\x012\x86"])).unwrap(),
            Value::Tuple(vec![one(), one()])
        );
    }

    #[test]
    fn the_memo_shares_containers_like_python() {
        // A list memoised while empty, filled, then read back from the memo.
        let bytes = pickle(&[b"]q\x00K\x01a0h\x00"]);
        assert_eq!(run(&bytes).unwrap(), Value::List(vec![Value::Int(1)]));
        // LONG_BINPUT / LONG_BINGET and MEMOIZE (protocol 4).
        let bytes = pickle(&[&unicode("x"), b"r\x05\x00\x00\x000j\x05\x00\x00\x00"]);
        assert_eq!(run(&bytes).unwrap(), s("x"));
        let bytes = pickle(&[&unicode("y"), &[op::MEMOIZE], b"0h\x00"]);
        assert_eq!(run(&bytes).unwrap(), s("y"));
        assert!(err(&pickle(&[b"h\x07"])).contains("memo entry 7"));
    }

    #[test]
    fn frames_and_protocols() {
        let mut bytes = vec![op::PROTO, 4, op::FRAME];
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(b"K\x09.");
        assert_eq!(run(&bytes).unwrap(), Value::Int(9));
        let mut bad = vec![op::PROTO, 4, op::FRAME];
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&bad).contains("declares"));
        assert!(err(b"\x80\x01N.").contains("protocol 1"));
        assert!(err(b"\x80\x06N.").contains("protocol 6"));
    }

    #[test]
    fn the_consumed_length_allows_pickles_in_a_row() {
        let mut two = pickle(&[b"K\x01"]);
        let first = two.len();
        two.extend_from_slice(&pickle(&[b"K\x02"]));
        let (value, used) = load(&two, "t").unwrap();
        assert_eq!((value, used), (Value::Int(1), first));
        assert_eq!(load(&two[used..], "t").unwrap().0, Value::Int(2));
    }

    #[test]
    fn ordered_dict_and_tensor_rebuild_are_recorded() {
        let bytes = pickle(&[
            b"ccollections\nOrderedDict\n)R",
            &unicode("w"),
            b"ctorch._utils\n_rebuild_tensor_v2\n(",
            b"(",
            &unicode("storage"),
            b"ctorch\nFloatStorage\n",
            &unicode("0"),
            &unicode("cpu"),
            b"K\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs",
            b"}b",
        ]);
        let value = run(&bytes).unwrap();
        let Value::Dict(entries) = value else {
            panic!("{value:?}")
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, s("w"));
        let Value::Call { callee, args, .. } = &entries[0].1 else {
            panic!()
        };
        assert_eq!(*callee, Global::RebuildTensorV2);
        assert_eq!(args.len(), 6);
        let Value::PersistentId(id) = &args[0] else {
            panic!()
        };
        assert_eq!(
            **id,
            Value::Tuple(vec![
                s("storage"),
                Value::Global(Global::Storage("FloatStorage")),
                s("0"),
                s("cpu"),
                Value::Int(4)
            ])
        );
        assert_eq!(args[5], Value::Dict(vec![]));
    }

    #[test]
    fn stack_global_resolves_like_global() {
        let bytes = pickle(&[
            &unicode("torch"),
            &unicode("HalfStorage"),
            &[op::STACK_GLOBAL],
        ]);
        assert_eq!(
            run(&bytes).unwrap(),
            Value::Global(Global::Storage("HalfStorage"))
        );
    }

    #[test]
    fn other_globals_are_refused_by_name() {
        let e = err(&pickle(&[b"cos\nsystem\n", &unicode("echo hi"), b"\x85R"]));
        assert!(e.contains("os.system") && e.contains("refusing"), "{e}");
        let e = err(&pickle(&[
            &unicode("builtins"),
            &unicode("eval"),
            &[op::STACK_GLOBAL],
        ]));
        assert!(e.contains("builtins.eval"), "{e}");
        let e = err(&pickle(&[b"c__main__\nAlexNet\n"]));
        assert!(
            e.contains("__main__.AlexNet") && e.contains("state_dict()"),
            "{e}"
        );
        let e = err(&pickle(&[b"ctorch\nUntypedStorage\n"]));
        assert!(e.contains("torch.UntypedStorage"), "{e}");
    }

    #[test]
    fn unsupported_opcodes_are_named() {
        assert!(err(&pickle(&[b"\x81"])).contains("NEWOBJ"));
        assert!(err(&pickle(&[b"I1\n"])).contains("INT"));
        assert!(err(&pickle(&[b"\xff"])).contains("unknown opcode 0xff"));
        assert!(err(b"\x80\x02").contains("opcode"));
    }

    #[test]
    fn declared_lengths_are_checked_before_allocating() {
        for op in [
            &b"X\xf0\xff\xff\xff"[..],
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"B\xff\xff\xff\xff",
            b"\x8c\x05ab",
        ] {
            let e = err(&pickle(&[op]));
            assert!(e.contains("remain"), "{e}");
        }
    }

    #[test]
    fn nesting_stack_and_marks_are_bounded() {
        let marks = pickle(&[&[op::MARK; 100]]);
        assert!(err(&marks).contains("deeper than 64"));
        let mut tuples = vec![op::EMPTY_TUPLE];
        tuples.extend(std::iter::repeat_n(op::TUPLE1, 1000));
        let e = err(&pickle(&[&tuples]));
        assert!(e.contains("deeper than 64"), "{e}");
        // A list that contains itself.
        let e = err(&pickle(&[b"]q\x00h\x00a"]));
        assert!(e.contains("contains itself"), "{e}");
        // Doubling through the memo: 2^60 leaves from a few hundred bytes.
        let mut bomb = vec![op::EMPTY_TUPLE];
        for _ in 0..60 {
            bomb.extend_from_slice(b"q\x00h\x00\x86");
        }
        let e = err(&pickle(&[&bomb]));
        assert!(e.contains("far larger"), "{e}");
    }

    #[test]
    fn malformed_programs_are_errors() {
        assert!(err(&pickle(&[b"a"])).contains("stack empty"));
        assert!(err(&pickle(&[b"K\x01t"])).contains("without a MARK"));
        assert!(err(&pickle(&[b"(0"])).contains("stack empty"));
        assert!(err(&pickle(&[b"K\x01K\x02a"])).contains("not a list"));
        assert!(err(&pickle(&[b"}K\x01s"])).contains("stack empty"));
        assert!(err(&pickle(&[b"}(K\x01u"])).contains("odd number"));
        assert!(err(&pickle(&[b"K\x01)R"])).contains("not a global"));
        assert!(
            err(&pickle(&[b"ccollections\nOrderedDict\nK\x01\x85R"])).contains("from arguments")
        );
        assert!(err(&pickle(&[b"cos\nsystem"])).contains("end of line"));
        assert!(err(b"").contains("opcode"));
    }

    #[test]
    fn every_truncation_of_a_state_dict_pickle_is_an_error() {
        let bytes = pickle(&[
            b"ccollections\nOrderedDict\nq\x00)Rq\x01(",
            &unicode("w"),
            b"ctorch._utils\n_rebuild_tensor_v2\n((",
            &unicode("storage"),
            b"ctorch\nFloatStorage\n",
            &unicode("0"),
            &unicode("cpu"),
            b"K\x04tQK\x00K\x04\x85K\x01\x85\x89h\x00)RtRu}b",
        ]);
        assert!(run(&bytes).is_ok());
        for len in 0..bytes.len() {
            assert!(run(&bytes[..len]).is_err(), "length {len}");
        }
    }
}
