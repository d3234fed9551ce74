//! Field offsets of kernel structs from the kernel's BTF (/sys/kernel/btf/vmlinux), for the walk
//! program, which reads `struct tcp_sock` fields at offsets rewritten at load time (eBPF written
//! in Rust has no CO-RE relocations). A small reader of the BTF format: the header, the type
//! section (structs, unions and the types that wrap them) and the string section.

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
    #[error("{strukt}.{field} is not {want} in the kernel's BTF")]
    Kind { strukt: String, field: String, want: &'static str },
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

/// One type of the type section: where its record starts (after the 12-byte common header).
#[derive(Clone, Copy)]
struct TypeRec {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Byte offset of the kind-specific data in the type section.
    extra: u32,
}

impl TypeRec {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// The kernel's BTF, indexed by type id (0 is void). Lean on purpose: only each type's header
/// is kept (16 bytes a type); names and members are read from the blob when asked, so reading
/// vmlinux's ~100,000 types costs about as much memory as the file itself.
pub struct Btf {
    data: Vec<u8>,
    types_at: usize,
    types_len: usize,
    strings_at: usize,
    strings_len: usize,
    types: Vec<TypeRec>,
}

fn le32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

impl Btf {
    pub fn from_sys() -> Result<Btf, BtfError> {
        let data =
            std::fs::read(VMLINUX).map_err(|e| BtfError::Read { path: VMLINUX.into(), reason: e.to_string() })?;
        Btf::parse(data)
    }

    /// Parse a little-endian BTF blob (the only byte order of the kernels this agent runs on).
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("no BTF magic (0xeb9f, little-endian) at the start".into()));
        }
        let hdr_len = le32(&data, 4)? as usize;
        let (type_off, type_len) = (le32(&data, 8)? as usize, le32(&data, 12)? as usize);
        let (str_off, str_len) = (le32(&data, 16)? as usize, le32(&data, 20)? as usize);
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .filter(|s| s.checked_add(len).is_some_and(|e| e <= data.len()))
                .ok_or_else(|| BtfError::Malformed(format!("{what} section lies outside the data")))
        };
        let types_at = section(type_off, type_len, "type")?;
        let strings_at = section(str_off, str_len, "string")?;
        let t = &data[types_at..types_at + type_len];
        let mut types = vec![TypeRec { name_off: 0, info: 0, size_or_type: 0, extra: 0 }];
        let mut pos = 0usize;
        while pos < t.len() {
            let rec =
                TypeRec { name_off: le32(t, pos)?, info: le32(t, pos + 4)?, size_or_type: le32(t, pos + 8)?, extra: 0 };
            pos += 12;
            let rec = TypeRec { extra: pos as u32, ..rec };
            let vlen = rec.vlen();
            pos += match rec.kind() {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::ARRAY => 12,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                other => return Err(BtfError::Malformed(format!("unknown type kind {other}"))),
            };
            if pos > t.len() {
                return Err(BtfError::Malformed(format!("type section ends inside type {}", types.len())));
            }
            types.push(rec);
        }
        Ok(Btf { data, types_at, types_len: type_len, strings_at, strings_len: str_len, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = &self.data[self.strings_at..self.strings_at + self.strings_len];
        let s = s.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn word(&self, at: usize) -> u32 {
        // In bounds: `parse` checked every type's extra data against the section.
        le32(&self.data[self.types_at..self.types_at + self.types_len], at).unwrap_or(0)
    }

    /// Members of a struct or union: (name offset, type, bit offset).
    fn members(&self, rec: &TypeRec) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let (base, kf) = (rec.extra as usize, rec.kind_flag());
        (0..rec.vlen()).map(move |i| {
            let at = base + 12 * i;
            let offset = self.word(at + 8);
            // With kind_flag, the top byte is a bitfield's size and the rest its offset.
            (self.word(at), self.word(at + 4), if kf { offset & 0x00ff_ffff } else { offset })
        })
    }

    fn resolve(&self, mut id: u32) -> Option<&TypeRec> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => id = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        matches!(t.kind(), kind::INT | kind::ENUM | kind::ENUM64 | kind::FLOAT | kind::STRUCT | kind::UNION)
            .then_some(t.size_or_type)
    }

    fn is_composite(t: &TypeRec) -> bool {
        matches!(t.kind(), kind::STRUCT | kind::UNION)
    }

    /// Byte offset of `field` among the members of `rec` (searching anonymous struct/union
    /// members too), and the field's type.
    fn find(&self, rec: &TypeRec, field: &str, depth: u32) -> Option<(u32, u32)> {
        for (name, ty, bits) in self.members(rec) {
            let n = self.name(name);
            if n == field.as_bytes() {
                return Some((bits / 8, ty));
            }
            if n.is_empty()
                && depth < 8
                && let Some(inner) = self.resolve(ty).filter(|t| Btf::is_composite(t))
                && let Some((off, ty)) = self.find(inner, field, depth + 1)
            {
                return Some((bits / 8 + off, ty));
            }
        }
        None
    }

    /// The type id of the function `name` (a FUNC), e.g. an iterator's `bpf_iter_tcp`.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.id_of(kind::FUNC, name)
    }

    /// The type id of the typedef `name`, e.g. a BTF tracepoint's `btf_trace_tcp_retransmit_synack`.
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        self.id_of(kind::TYPEDEF, name)
    }

    fn id_of(&self, k: u32, name: &str) -> Option<u32> {
        self.types.iter().position(|t| t.kind() == k && self.name(t.name_off) == name.as_bytes()).map(|i| i as u32)
    }

    fn struct_id(&self, name: &str) -> Option<usize> {
        self.types.iter().position(|t| t.kind() == kind::STRUCT && self.name(t.name_off) == name.as_bytes())
    }

    /// Byte offset of `strukt.field`, and the field's type id.
    fn member(&self, strukt: &str, field: &str) -> Result<(u32, u32), BtfError> {
        let rec = self.struct_id(strukt).map(|i| self.types[i]).ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find(&rec, field, 0).ok_or_else(|| BtfError::NoField { strukt: strukt.into(), field: field.into() })
    }

    /// Byte offset of `strukt.field`, whose size must be `size` bytes.
    pub fn field_offset(&self, strukt: &str, field: &str, size: u32) -> Result<u32, BtfError> {
        let (off, ty) = self.member(strukt, field)?;
        let got = self.size_of(ty).unwrap_or(0);
        if got != size {
            return Err(BtfError::Size { strukt: strukt.into(), field: field.into(), got, want: size });
        }
        Ok(off)
    }

    /// Byte offset of `strukt.field`, which must be a pointer (`want_kind` = `kind::PTR`), an
    /// array (`kind::ARRAY`, a flexible one included) or a struct (`kind::STRUCT`), whatever its
    /// size.
    fn member_offset(&self, strukt: &str, field: &str, want_kind: u32) -> Result<u32, BtfError> {
        let (off, ty) = self.member(strukt, field)?;
        if self.resolve(ty).map(|t| t.kind()) != Some(want_kind) {
            let want = match want_kind {
                kind::PTR => "a pointer",
                kind::ARRAY => "an array",
                _ => "a struct",
            };
            return Err(BtfError::Kind { strukt: strukt.into(), field: field.into(), want });
        }
        Ok(off)
    }
}

/// A BTF blob in which function `name` has type id `id` and every lower id is a placeholder (a
/// pointer to void): what aya's `Iter::load` needs, which looks the iterator's kernel type id up
/// by name in a parsed BTF. Parsing the kernel's whole BTF a second time for that one id would
/// raise the agent's peak memory by as much again.
pub fn stand_in_for_func(id: u32, name: &str) -> Vec<u8> {
    stand_in(id, name, kind::FUNC)
}

/// The same for the typedef `name`: what aya's `BtfTracePoint::load` looks up
/// (`btf_trace_<tracepoint>`).
pub fn stand_in_for_typedef(id: u32, name: &str) -> Vec<u8> {
    stand_in(id, name, kind::TYPEDEF)
}

fn stand_in(id: u32, name: &str, k: u32) -> Vec<u8> {
    let mut types = Vec::with_capacity(12 * id as usize);
    for _ in 1..id {
        for w in [0u32, kind::PTR << 24, 0] {
            types.extend_from_slice(&w.to_le_bytes());
        }
    }
    for w in [1u32, k << 24, 0] {
        types.extend_from_slice(&w.to_le_bytes());
    }
    let strings = [b"\0", name.as_bytes(), b"\0"].concat();
    let mut out = Vec::with_capacity(24 + types.len() + strings.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(&strings);
    out
}

/// Where the walk program finds a socket's counters: byte offsets in `struct tcp_sock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpOffsets {
    pub bytes_acked: u32,
    pub bytes_received: u32,
    pub segs_out: u32,
    pub segs_in: u32,
    /// `tcp_sock.tcp_mstamp` (u64): when the kernel last handled a segment of the socket.
    pub mstamp: u32,
    pub total_retrans: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub srtt_us: u32,
    /// `sock_common.skc_state` (the TCP state), which every socket starts with.
    pub state: u32,
    /// `tcp_sock.bpf_sock_ops_cb_flags`: which sock_ops callbacks the socket makes (one byte).
    pub cb_flags: u32,
    /// `sock_common` addressing, for the flow key of a socket the walk folds first:
    /// `skc_family`, `skc_rcv_saddr`, `skc_daddr`, `skc_v6_rcv_saddr`, `skc_v6_daddr`,
    /// `skc_num` (local port, host order), `skc_dport` (remote port, network order).
    pub family: u32,
    pub rcv_saddr: u32,
    pub daddr: u32,
    pub v6_rcv_saddr: u32,
    pub v6_daddr: u32,
    pub num: u32,
    pub dport: u32,
    /// `sk_flags` (`enum sock_flags` bits): `SOCK_DONE` is set by the peer's FIN (`tcp_fin`),
    /// which is how the close of a walked socket knows the FIN arrived.
    pub sk_flags: u32,
}

impl TcpOffsets {
    pub fn from_btf(btf: &Btf) -> Result<TcpOffsets, BtfError> {
        let f = |name, size| btf.field_offset("tcp_sock", name, size);
        let c = |name, size| btf.field_offset("sock_common", name, size);
        Ok(TcpOffsets {
            bytes_acked: f("bytes_acked", 8)?,
            bytes_received: f("bytes_received", 8)?,
            segs_out: f("segs_out", 4)?,
            segs_in: f("segs_in", 4)?,
            mstamp: f("tcp_mstamp", 8)?,
            total_retrans: f("total_retrans", 4)?,
            snd_una: f("snd_una", 4)?,
            snd_nxt: f("snd_nxt", 4)?,
            srtt_us: f("srtt_us", 4)?,
            state: btf.field_offset("sock_common", "skc_state", 1)?,
            cb_flags: f("bpf_sock_ops_cb_flags", 1)?,
            family: c("skc_family", 2)?,
            rcv_saddr: c("skc_rcv_saddr", 4)?,
            daddr: c("skc_daddr", 4)?,
            v6_rcv_saddr: c("skc_v6_rcv_saddr", 16)?,
            v6_daddr: c("skc_v6_daddr", 16)?,
            num: c("skc_num", 2)?,
            dport: c("skc_dport", 2)?,
            // `sock_common.skc_flags` since 6.x (`sk_flags` is a macro for it), before that
            // `sock.sk_flags`; both at the same place in a tcp_sock, which starts with its sock.
            sk_flags: c("skc_flags", 8).or_else(|_| btf.field_offset("sock", "sk_flags", 8))?,
        })
    }
}

/// Where a socket's cgroup and the ids of its cgroup's ancestors are, for the walk to tell the
/// agent's sockets (its cgroup's or below) from those of another agent on a sibling cgroup,
/// whose callback flags look the same.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupOffsets {
    /// `sock.sk_cgrp_data.cgroup` (a `struct cgroup *`), from the start of the socket.
    pub sk_cgroup: u32,
    /// `cgroup.level` (int): 0 for the root.
    pub level: u32,
    /// `cgroup.ancestors` (`struct cgroup *[]`, the root first, the cgroup itself at `level`).
    pub ancestors: u32,
    /// `cgroup.kn` (a `struct kernfs_node *`).
    pub kn: u32,
    /// `kernfs_node.id` (u64): the cgroup's id, its directory's inode number.
    pub kn_id: u32,
}

impl CgroupOffsets {
    pub fn from_btf(btf: &Btf) -> Result<CgroupOffsets, BtfError> {
        Ok(CgroupOffsets {
            sk_cgroup: btf.member_offset("sock", "sk_cgrp_data", kind::STRUCT)?
                + btf.member_offset("sock_cgroup_data", "cgroup", kind::PTR)?,
            level: btf.field_offset("cgroup", "level", 4)?,
            ancestors: btf.member_offset("cgroup", "ancestors", kind::ARRAY)?,
            kn: btf.member_offset("cgroup", "kn", kind::PTR)?,
            kn_id: btf.field_offset("kernfs_node", "id", 8)?,
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
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.struct_id("outer"), Some(7));
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
    fn a_stand_in_puts_the_function_at_its_id() {
        let b = Btf::parse(stand_in_for_func(7, "bpf_iter_tcp")).unwrap();
        assert_eq!(b.func_id("bpf_iter_tcp"), Some(7));
        assert_eq!(b.func_id("bpf_iter_udp"), None);
        // aya reads it to the same id.
        let aya = aya::Btf::parse(&stand_in_for_func(7, "bpf_iter_tcp"), aya::Endianness::default()).unwrap();
        assert_eq!(aya.id_by_type_name_kind("bpf_iter_tcp", aya_obj::btf::BtfKind::Func).unwrap(), 7);
        let name = "btf_trace_tcp_retransmit_synack";
        let b = Btf::parse(stand_in_for_typedef(9, name)).unwrap();
        assert_eq!((b.typedef_id(name), b.func_id(name)), (Some(9), None));
        let aya = aya::Btf::parse(&stand_in_for_typedef(9, name), aya::Endianness::default()).unwrap();
        assert_eq!(aya.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Typedef).unwrap(), 9);
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        assert!(matches!(Btf::parse(b"not btf at all, not at all".to_vec()), Err(BtfError::Malformed(_))));
        let b = blob();
        for cut in [4, 23, 30, b.len() - 20] {
            assert!(Btf::parse(b[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut bad_kind = b.clone();
        bad_kind[24 + 7] = 30; // the first type's kind byte
        assert!(matches!(Btf::parse(bad_kind), Err(BtfError::Malformed(m)) if m.contains("kind 30")));
        // A struct whose members run past the type section.
        let mut long = b.clone();
        let type_len = u32::from_le_bytes(long[12..16].try_into().unwrap());
        long[24 + type_len as usize - 36 + 4..][..4].copy_from_slice(&(kind::STRUCT << 24 | 200).to_le_bytes());
        assert!(matches!(Btf::parse(long), Err(BtfError::Malformed(m)) if m.contains("ends inside")), "vlen too long");
    }

    #[test]
    fn this_kernels_cgroup_offsets() {
        let btf = Btf::from_sys().expect("the kernel's BTF at /sys/kernel/btf/vmlinux");
        let o = CgroupOffsets::from_btf(&btf).unwrap();
        // sk_cgrp_data is well inside struct sock, past sock_common; the cgroup's fields differ.
        assert!(o.sk_cgroup > 100 && o.sk_cgroup < 1000, "{o:?}");
        assert!(o.level != o.ancestors && o.kn != o.level && o.kn != o.ancestors, "{o:?}");
        assert!(o.ancestors > o.level, "the flexible array is the last member: {o:?}");
        let e = btf.member_offset("cgroup", "level", kind::PTR).unwrap_err();
        assert_eq!(e.to_string(), "cgroup.level is not a pointer in the kernel's BTF");
        assert!(matches!(btf.member_offset("cgroup", "nope", kind::PTR), Err(BtfError::NoField { .. })));
    }

    #[test]
    fn this_kernels_tcp_sock() {
        // The real thing: the running kernel's BTF, which the agent requires (`flow-agent check`).
        let btf = Btf::from_sys().expect("the kernel's BTF at /sys/kernel/btf/vmlinux");
        let o = TcpOffsets::from_btf(&btf).unwrap();
        assert!(btf.func_id("bpf_iter_tcp").is_some_and(|id| id > 1000));
        assert!(btf.typedef_id("btf_trace_tcp_retransmit_synack").is_some_and(|id| id > 1000));
        // tcp_sock starts with inet_connection_sock, far larger than 512 bytes; the counters are
        // distinct fields.
        let all = [
            o.bytes_acked,
            o.bytes_received,
            o.segs_out,
            o.segs_in,
            o.mstamp,
            o.total_retrans,
            o.snd_una,
            o.snd_nxt,
            o.srtt_us,
        ];
        // The TCP state and the addressing are in the first bytes of every socket (struct
        // sock_common), the callback flags in tcp_sock's own part.
        assert!(o.state < 64, "{o:?}");
        for a in [o.family, o.rcv_saddr, o.daddr, o.v6_rcv_saddr, o.v6_daddr, o.num, o.dport] {
            assert!(a < 128, "{o:?}");
        }
        assert!(o.cb_flags > 512, "{o:?}");
        // In struct sock (its sock_common or its own fields), before inet_sock's.
        assert!(o.sk_flags < 1024 && o.sk_flags.is_multiple_of(8), "{o:?}");
        assert!(all.iter().all(|&x| x > 512), "{o:?}");
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{o:?}");
    }
}
