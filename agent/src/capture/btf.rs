//! Field offsets of kernel structs from the kernel's BTF (/sys/kernel/btf/vmlinux), for the walk
//! program, which reads `struct tcp_sock` fields at offsets rewritten at load time (eBPF written
//! in Rust has no CO-RE relocations). A small reader of the BTF format: the header, the type
//! section (structs, unions and the types that wrap them) and the string section.

use std::collections::HashMap;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no field {field} in the kernel's BTF")]
    NoField { strukt: String, field: String },
    #[error("{strukt}.{field} is {got} bytes in this kernel, not {want}")]
    Size { strukt: String, field: String, got: u32, want: u32 },
}

const MAGIC: u16 = 0xeb9f;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: u32,
    /// Offset in bits from the start of the enclosing struct or union.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Structs and unions: byte size and members.
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    /// Integers, enums, floats: byte size.
    Sized(u32),
    /// typedef, const, volatile, restrict, type tags: the type they wrap.
    Alias(u32),
    Other,
}

/// The types of one BTF blob, indexed by type id (0 is void).
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let b = self
            .data
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| BtfError::Malformed(format!("type section ends inside a type at byte {}", self.pos)))?;
        self.pos += 4;
        Ok(u32::from_le_bytes(b.try_into().unwrap()))
    }

    fn skip(&mut self, n: usize) -> Result<(), BtfError> {
        if self.pos + n > self.data.len() {
            return Err(BtfError::Malformed(format!("type section ends inside a type at byte {}", self.pos)));
        }
        self.pos += n;
        Ok(())
    }
}

fn le32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| BtfError::Malformed("truncated header".into()))
}

impl Btf {
    pub fn from_sys() -> Result<Btf, BtfError> {
        let data =
            std::fs::read(VMLINUX).map_err(|e| BtfError::Read { path: VMLINUX.into(), reason: e.to_string() })?;
        Btf::parse(&data)
    }

    /// Parse a little-endian BTF blob (the only byte order of the kernels this agent runs on).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("no BTF magic (0xeb9f, little-endian) at the start".into()));
        }
        let hdr_len = le32(data, 4)? as usize;
        let (type_off, type_len) = (le32(data, 8)? as usize, le32(data, 12)? as usize);
        let (str_off, str_len) = (le32(data, 16)? as usize, le32(data, 20)? as usize);
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|s| Some((s, s.checked_add(len)?)))
                .and_then(|(s, e)| data.get(s..e))
                .ok_or_else(|| BtfError::Malformed(format!("{what} section lies outside the data")))
        };
        let types_data = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;
        let name = |off: u32| -> Result<String, BtfError> {
            let s = strings.get(off as usize..).ok_or_else(|| BtfError::Malformed(format!("name offset {off}")))?;
            let end = s.iter().position(|&b| b == 0).ok_or_else(|| BtfError::Malformed("unterminated name".into()))?;
            Ok(String::from_utf8_lossy(&s[..end]).into_owned())
        };

        let mut types = vec![Type::Other];
        let mut structs = HashMap::new();
        let mut r = Reader { data: types_data, pos: 0 };
        while r.pos < types_data.len() {
            let (name_off, info, size_or_type) = (r.u32()?, r.u32()?, r.u32()?);
            let (k, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            let t = match k {
                kind::INT => {
                    r.skip(4)?;
                    Type::Sized(size_or_type)
                }
                kind::ENUM => {
                    r.skip(8 * vlen)?;
                    Type::Sized(size_or_type)
                }
                kind::ENUM64 => {
                    r.skip(12 * vlen)?;
                    Type::Sized(size_or_type)
                }
                kind::FLOAT => Type::Sized(size_or_type),
                kind::STRUCT | kind::UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let (m_name, ty, offset) = (r.u32()?, r.u32()?, r.u32()?);
                        // With kind_flag, the top byte is a bitfield's size and the rest its offset.
                        let bit_offset = if kind_flag { offset & 0x00ff_ffff } else { offset };
                        members.push(Member { name: name(m_name)?, ty, bit_offset });
                    }
                    let n = name(name_off)?;
                    if k == kind::STRUCT && !n.is_empty() {
                        structs.entry(n).or_insert(types.len() as u32);
                    }
                    Type::Composite { size: size_or_type, members }
                }
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                kind::ARRAY => {
                    r.skip(12)?;
                    Type::Other
                }
                kind::FUNC_PROTO => {
                    r.skip(8 * vlen)?;
                    Type::Other
                }
                kind::VAR | kind::DECL_TAG => {
                    r.skip(4)?;
                    Type::Other
                }
                kind::DATASEC => {
                    r.skip(12 * vlen)?;
                    Type::Other
                }
                kind::PTR | kind::FWD | kind::FUNC => Type::Other,
                other => return Err(BtfError::Malformed(format!("unknown type kind {other}"))),
            };
            types.push(t);
        }
        Ok(Btf { types, structs })
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                t => return Some(t),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        match self.resolve(id)? {
            Type::Sized(s) | Type::Composite { size: s, .. } => Some(*s),
            _ => None,
        }
    }

    /// Byte offset of `field` in `members` (searching anonymous struct/union members too), and
    /// the field's type.
    fn find(&self, members: &[Member], field: &str, depth: u32) -> Option<(u32, u32)> {
        for m in members {
            if m.name == field {
                return Some((m.bit_offset / 8, m.ty));
            }
            if m.name.is_empty()
                && depth < 8
                && let Some(Type::Composite { members: inner, .. }) = self.resolve(m.ty)
                && let Some((off, ty)) = self.find(inner, field, depth + 1)
            {
                return Some((m.bit_offset / 8 + off, ty));
            }
        }
        None
    }

    /// Byte offset of `strukt.field`, whose size must be `size` bytes.
    pub fn field_offset(&self, strukt: &str, field: &str, size: u32) -> Result<u32, BtfError> {
        let id = *self.structs.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let Some(Type::Composite { members, .. }) = self.types.get(id as usize) else {
            return Err(BtfError::NoStruct(strukt.into()));
        };
        let (off, ty) = self
            .find(members, field, 0)
            .ok_or_else(|| BtfError::NoField { strukt: strukt.into(), field: field.into() })?;
        let got = self.size_of(ty).unwrap_or(0);
        if got != size {
            return Err(BtfError::Size { strukt: strukt.into(), field: field.into(), got, want: size });
        }
        Ok(off)
    }
}

/// Where the walk program finds a socket's counters: byte offsets in `struct tcp_sock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpOffsets {
    pub bytes_acked: u32,
    pub bytes_received: u32,
    pub segs_out: u32,
    pub segs_in: u32,
    pub total_retrans: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub srtt_us: u32,
}

impl TcpOffsets {
    pub fn from_btf(btf: &Btf) -> Result<TcpOffsets, BtfError> {
        let f = |name, size| btf.field_offset("tcp_sock", name, size);
        Ok(TcpOffsets {
            bytes_acked: f("bytes_acked", 8)?,
            bytes_received: f("bytes_received", 8)?,
            segs_out: f("segs_out", 4)?,
            segs_in: f("segs_in", 4)?,
            total_retrans: f("total_retrans", 4)?,
            snd_una: f("snd_una", 4)?,
            snd_nxt: f("snd_nxt", 4)?,
            srtt_us: f("srtt_us", 4)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: `struct outer { u32 a; union { struct { u64 deep; }; u16 b; }; }`
    /// and a typedef of u64.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0u32\0u64\0outer\0a\0deep\0b\0u16\0u64_t\0".to_vec();
        let at = |s: &str, strings: &[u8]| {
            let needle = [s.as_bytes(), b"\0"].concat();
            strings.windows(needle.len()).position(|w| w == needle).unwrap() as u32
        };
        let info = |k: u32, vlen: u32, kf: bool| (k << 24) | vlen | ((kf as u32) << 31);
        let mut t: Vec<u32> = Vec::new();
        // 1: u32, 2: u64, 3: u16 (INT with its extra word)
        t.extend([at("u32", &strings), info(kind::INT, 0, false), 4, 32]);
        t.extend([at("u64", &strings), info(kind::INT, 0, false), 8, 64]);
        t.extend([at("u16", &strings), info(kind::INT, 0, false), 2, 16]);
        // 4: typedef u64_t -> 2
        t.extend([at("u64_t", &strings), info(kind::TYPEDEF, 0, false), 2]);
        // 5: anonymous struct { u64_t deep; }
        t.extend([0, info(kind::STRUCT, 1, false), 8, at("deep", &strings), 4, 0]);
        // 6: anonymous union { struct 5; u16 b (bitfield of 16 at 0); }
        t.extend([0, info(kind::UNION, 2, true), 8, 0, 5, 0, at("b", &strings), 3, 16 << 24]);
        // 7: struct outer { u32 a; union 6 at byte 8; }
        t.extend([at("outer", &strings), info(kind::STRUCT, 2, false), 16, at("a", &strings), 1, 0, 0, 6, 64]);
        let types: Vec<u8> = t.iter().flat_map(|w| w.to_le_bytes()).collect();
        strings.push(0);
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend(w.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn offsets_through_anonymous_members_and_typedefs() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.structs.get("outer"), Some(&7));
        assert_eq!(btf.field_offset("outer", "a", 4), Ok(0));
        assert_eq!(btf.field_offset("outer", "deep", 8), Ok(8));
        assert_eq!(btf.field_offset("outer", "b", 2), Ok(8));
        assert_eq!(
            btf.field_offset("outer", "a", 8),
            Err(BtfError::Size { strukt: "outer".into(), field: "a".into(), got: 4, want: 8 })
        );
        assert!(matches!(btf.field_offset("outer", "zz", 4), Err(BtfError::NoField { .. })));
        assert!(matches!(btf.field_offset("inner", "a", 4), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        assert!(matches!(Btf::parse(b"not btf at all, not at all"), Err(BtfError::Malformed(_))));
        let b = blob();
        for cut in [4, 23, 30, b.len() - 20] {
            assert!(Btf::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_kind = b.clone();
        bad_kind[24 + 7] = 30; // the first type's kind byte
        assert!(matches!(Btf::parse(&bad_kind), Err(BtfError::Malformed(m)) if m.contains("kind 30")));
    }

    #[test]
    fn this_kernels_tcp_sock() {
        // The real thing: the running kernel's BTF, which the agent requires (`flow-agent check`).
        let btf = Btf::from_sys().expect("the kernel's BTF at /sys/kernel/btf/vmlinux");
        let o = TcpOffsets::from_btf(&btf).unwrap();
        // tcp_sock starts with inet_connection_sock, far larger than 512 bytes; the counters are
        // distinct fields.
        let all =
            [o.bytes_acked, o.bytes_received, o.segs_out, o.segs_in, o.total_retrans, o.snd_una, o.snd_nxt, o.srtt_us];
        assert!(all.iter().all(|&x| x > 512), "{o:?}");
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{o:?}");
    }
}
