//! Member offsets of kernel structs, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE relocations, so the
//! programs get these offsets as a global at load time instead
//! (TOOLCHAIN.md §4). aya parses BTF too, but keeps its accessors private;
//! all that is needed here is struct members, which is a short walk.
use std::collections::HashMap;

use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    Header,
    #[error("BTF type section is cut short at type {0}")]
    Truncated(u32),
    #[error("BTF type {0} has unknown kind {1}")]
    Kind(u32, u32),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {0} has no member {1} in the kernel's BTF")]
    NoMember(String, String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name: u32,
    /// For modifiers and typedefs: the type referred to.
    refers: u32,
    members: Vec<Member>,
}

/// The parts of a BTF blob needed to find member offsets.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_kernel() -> Result<Self, std::io::Error> {
        let data = std::fs::read(VMLINUX)?;
        Self::parse(&data).map_err(std::io::Error::other)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
            return Err(BtfError::Header);
        }
        let field = |i: usize| u32_at(data, 4 + 4 * i).ok_or(BtfError::Header);
        let hdr_len = field(0)? as usize;
        let (type_off, type_len) = (field(1)? as usize, field(2)? as usize);
        let (str_off, str_len) = (field(3)? as usize, field(4)? as usize);
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Header)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Header)?
            .to_vec();
        let mut btf = Btf {
            strings,
            types: vec![Type {
                kind: 0,
                name: 0,
                refers: 0,
                members: Vec::new(),
            }],
            structs: HashMap::new(),
        };
        let mut off = 0;
        while off < types_bytes.len() {
            let id = btf.types.len() as u32;
            let at = |o: usize| u32_at(types_bytes, o).ok_or(BtfError::Truncated(id));
            let (name, info, size_or_type) = (at(off)?, at(off + 4)?, at(off + 8)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 != 0;
            off += 12;
            let mut members = Vec::new();
            off += match kind {
                1 | 14 | 17 => 4,          // int, var, decl_tag
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, modifiers, func, float, type_tag
                3 => 12,                   // array
                6 | 13 => 8 * vlen,        // enum, func_proto
                15 | 19 => 12 * vlen,      // datasec, enum64
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = off + 12 * m;
                        let raw = at(base + 8)?;
                        members.push(Member {
                            name: at(base)?,
                            ty: at(base + 4)?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                        });
                    }
                    12 * vlen
                }
                other => return Err(BtfError::Kind(id, other)),
            };
            if kind == KIND_STRUCT && !members.is_empty() {
                let n = btf.name(name).to_owned();
                btf.structs.entry(n).or_insert(id);
            }
            btf.types.push(Type {
                kind,
                name,
                refers: size_or_type,
                members,
            });
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.refers
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` in `t`, looking inside anonymous struct and
    /// union members (`mm_struct` keeps its fields in one).
    fn find(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if self.name(m.name) == member {
                return Some(m.bit_offset);
            }
            if m.name == 0
                && let Some(inner) = self.resolve(m.ty)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(o) = self.find(inner, member, depth + 1)
            {
                return Some(m.bit_offset + o);
            }
        }
        None
    }

    /// Byte offset of `strukt.member`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let t = &self.types[id as usize];
        debug_assert_eq!(self.name(t.name), strukt);
        self.find(t, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(strukt.into(), member.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_btf() {
        assert_eq!(Btf::parse(b"").err(), Some(BtfError::Header));
        assert_eq!(Btf::parse(&[0u8; 64]).err(), Some(BtfError::Header));
    }

    /// The running kernel's BTF: offsets the programs rely on exist, and
    /// one that cannot exist is refused rather than guessed.
    #[test]
    fn finds_the_members_the_programs_need_in_this_kernel() {
        let btf = Btf::from_kernel().expect("this kernel exposes BTF");
        for (s, m) in [
            ("task_struct", "mm"),
            ("mm_struct", "arg_start"),
            ("mm_struct", "arg_end"),
            ("file", "f_path"),
            ("file", "f_mode"),
            ("linux_binprm", "file"),
            ("task_struct", "tgid"),
        ] {
            btf.member_offset(s, m)
                .unwrap_or_else(|e| panic!("{s}.{m}: {e}"));
        }
        let start = btf.member_offset("mm_struct", "arg_start").unwrap();
        let end = btf.member_offset("mm_struct", "arg_end").unwrap();
        assert_eq!(end, start + 8, "arg_end follows arg_start");
        assert!(matches!(
            btf.member_offset("file", "no_such_member"),
            Err(BtfError::NoMember(..))
        ));
    }
}
