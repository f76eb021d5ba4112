//! Just enough ELF reading for the image: is a program a static aarch64 executable, and which
//! shared libraries does a dynamic one need (`DT_NEEDED`), so that only those go on the card.

use std::path::Path;

/// `e_machine` of 64-bit ARM.
pub const EM_AARCH64: u16 = 183;

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_LOAD: u32 = 1;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// What an ELF file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine`.
    pub machine: u16,
    /// `ET_EXEC` or `ET_DYN` with an entry point.
    pub executable: bool,
    /// The program interpreter (`PT_INTERP`), for dynamic executables.
    pub interpreter: Option<String>,
    /// Whether it has a dynamic section.
    pub dynamic: bool,
    /// The shared libraries it needs.
    pub needed: Vec<String>,
}

impl ElfInfo {
    /// A static aarch64 executable: what the card's `bramble` must be.
    pub fn is_static_aarch64(&self) -> bool {
        self.machine == EM_AARCH64 && self.executable && self.interpreter.is_none() && !self.dynamic
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a 64-bit little-endian ELF file; `None` if it is not one.
pub fn read(path: &Path) -> std::io::Result<Option<ElfInfo>> {
    Ok(parse(&std::fs::read(path)?))
}

/// Parses a 64-bit little-endian ELF image.
pub fn parse(b: &[u8]) -> Option<ElfInfo> {
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let kind = u16_at(b, 16)?;
    let machine = u16_at(b, 18)?;
    let entry = u64_at(b, 24)?;
    let phoff = usize::try_from(u64_at(b, 32)?).ok()?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    let mut interpreter = None;
    let mut dynamic_at = None;
    let mut loads = Vec::new();
    for index in 0..phnum {
        let ph = phoff + index * phentsize;
        let offset = usize::try_from(u64_at(b, ph + 8)?).ok()?;
        let vaddr = u64_at(b, ph + 16)?;
        let filesz = usize::try_from(u64_at(b, ph + 32)?).ok()?;
        match u32_at(b, ph)? {
            PT_INTERP => {
                let text = b.get(offset..offset + filesz)?;
                let text = text.split(|c| *c == 0).next().unwrap_or_default();
                interpreter = Some(String::from_utf8_lossy(text).into_owned());
            }
            PT_DYNAMIC => dynamic_at = Some((offset, filesz)),
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            _ => {}
        }
    }
    let mut needed = Vec::new();
    if let Some((offset, size)) = dynamic_at {
        let entries: Vec<(u64, u64)> = (0..size / 16)
            .map_while(|i| Some((u64_at(b, offset + i * 16)?, u64_at(b, offset + i * 16 + 8)?)))
            .take_while(|(tag, _)| *tag != 0)
            .collect();
        // DT_STRTAB is an address: find the file offset through the PT_LOAD segments.
        let strtab = entries
            .iter()
            .find(|(tag, _)| *tag == DT_STRTAB)
            .and_then(|(_, addr)| {
                loads.iter().find_map(|(vaddr, off, filesz)| {
                    (*addr >= *vaddr && *addr < vaddr + *filesz as u64)
                        .then(|| off + (addr - vaddr) as usize)
                })
            });
        if let Some(strtab) = strtab {
            for (_, name_at) in entries.iter().filter(|(tag, _)| *tag == DT_NEEDED) {
                let start = strtab + usize::try_from(*name_at).ok()?;
                let name = b.get(start..)?.split(|c| *c == 0).next()?;
                needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Some(ElfInfo {
        machine,
        executable: kind == 2 || (kind == 3 && entry != 0),
        interpreter,
        dynamic: dynamic_at.is_some(),
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_read() {
        let me = read(&std::env::current_exe().unwrap())
            .unwrap()
            .expect("an ELF");
        assert!(me.executable);
        #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
        {
            assert_eq!(me.machine, 62);
            assert!(
                me.needed.iter().any(|lib| lib.starts_with("libc.so")),
                "{me:?}"
            );
            assert!(!me.is_static_aarch64());
        }
    }

    #[test]
    fn non_elf_files_are_none() {
        assert_eq!(parse(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(parse(b"\x7fELF\x01\x01"), None, "32-bit is not read");
    }
}
