//! Just enough ELF to tell what a native addon needs: its CPU (`e_machine`),
//! the libraries it links (`DT_NEEDED`, which tell glibc from musl) and the
//! newest `GLIBC_x.y` symbol version it asks for (`.gnu.version_r`).
//!
//! Everything read from the file is bounds-checked: a truncated or hostile
//! file gives [`NotElf`] or less information, never a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where the bytes of an ELF file come from: a file, or memory (tests, fuzzing).
pub trait Bytes {
    /// Fills `buf` from `offset`; `false` when the file ends first or cannot be read.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> bool;
}

impl Bytes for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> bool {
        FileExt::read_exact_at(self, buf, offset).is_ok()
    }
}

impl Bytes for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> bool {
        let source = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?));
        source.map(|source| buf.copy_from_slice(source)).is_some()
    }
}

/// What an ELF shared object needs to load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `e_machine` (62 x86-64, 183 AArch64, …).
    pub machine: u16,
    /// The `DT_NEEDED` libraries.
    pub needed: Vec<String>,
    /// The newest `GLIBC_major.minor` version it needs, if any.
    pub glibc: Option<(u32, u32)>,
}

/// The file is not an ELF object (a Mach-O or PE addon, or no binary at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotElf;

const SHT_DYNAMIC: u32 = 6;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const DT_NEEDED: u64 = 1;
/// The most bytes read from one section (string tables of real addons are far smaller).
const MAX_SECTION: u64 = 16 << 20;
/// The most entries followed in a linked list of the file (against loops).
const MAX_ENTRIES: usize = 4096;

/// Reads the needs of the ELF file `file`.
pub fn read(file: &(impl Bytes + ?Sized)) -> Result<Needs, NotElf> {
    let mut header = [0u8; 64];
    // A 32-bit header is 52 bytes: a file may end right after it.
    let n = if file.read_exact_at(&mut header, 0) {
        64
    } else if file.read_exact_at(&mut header[..52], 0) {
        52
    } else {
        return Err(NotElf);
    };
    let elf = Reader::new(&header[..n])?;
    let machine = elf.u16(&header, 18).ok_or(NotElf)?;
    let mut needs = Needs {
        machine,
        ..Needs::default()
    };
    let sections = elf.sections(file).unwrap_or_default();
    for section in &sections {
        // Only the two small sections of interest are read, never code or data.
        if section.kind != SHT_DYNAMIC && section.kind != SHT_GNU_VERNEED {
            continue;
        }
        let strings = sections.get(section.link as usize);
        let (Some(strings), Some(data)) = (strings, section.read(file)) else {
            continue;
        };
        let Some(strings) = strings.read(file) else {
            continue;
        };
        match section.kind {
            SHT_DYNAMIC => needs.needed.extend(elf.needed(&data, &strings)),
            SHT_GNU_VERNEED => needs.glibc = needs.glibc.max(elf.newest_glibc(&data, &strings)),
            _ => {}
        }
    }
    Ok(needs)
}

/// Byte order and word size of one file.
#[derive(Clone, Copy)]
struct Reader {
    wide: bool,
    big_endian: bool,
}

struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

impl Section {
    fn read(&self, file: &(impl Bytes + ?Sized)) -> Option<Vec<u8>> {
        if self.size > MAX_SECTION {
            return None;
        }
        let mut data = vec![0; usize::try_from(self.size).ok()?];
        file.read_exact_at(&mut data, self.offset).then_some(data)
    }
}

impl Reader {
    fn new(header: &[u8]) -> Result<Reader, NotElf> {
        if header.len() < 52 || !header.starts_with(b"\x7fELF") {
            return Err(NotElf);
        }
        let wide = match header[4] {
            1 => false,
            2 if header.len() >= 64 => true,
            _ => return Err(NotElf),
        };
        let big_endian = match header[5] {
            1 => false,
            2 => true,
            _ => return Err(NotElf),
        };
        Ok(Reader { wide, big_endian })
    }

    fn bytes<const N: usize>(self, data: &[u8], at: u64) -> Option<[u8; N]> {
        let at = usize::try_from(at).ok()?;
        let mut bytes: [u8; N] = data.get(at..at.checked_add(N)?)?.try_into().ok()?;
        if self.big_endian {
            bytes.reverse();
        }
        Some(bytes)
    }

    fn u16(self, data: &[u8], at: u64) -> Option<u16> {
        self.bytes(data, at).map(u16::from_le_bytes)
    }

    fn u32(self, data: &[u8], at: u64) -> Option<u32> {
        self.bytes(data, at).map(u32::from_le_bytes)
    }

    /// A word: 8 bytes in a 64-bit file, 4 in a 32-bit one.
    fn word(self, data: &[u8], at: u64) -> Option<u64> {
        if self.wide {
            self.bytes(data, at).map(u64::from_le_bytes)
        } else {
            self.u32(data, at).map(u64::from)
        }
    }

    /// The section headers.
    fn sections(self, file: &(impl Bytes + ?Sized)) -> Option<Vec<Section>> {
        let mut header = [0u8; 64];
        if !file.read_exact_at(&mut header[..if self.wide { 64 } else { 52 }], 0) {
            return None;
        }
        let (offset_at, size_at, count_at) = if self.wide {
            (0x28, 0x3a, 0x3c)
        } else {
            (0x20, 0x2e, 0x30)
        };
        let offset = self.word(&header, offset_at)?;
        let entry_size = u64::from(self.u16(&header, size_at)?);
        let count = u64::from(self.u16(&header, count_at)?);
        if offset == 0 || entry_size < if self.wide { 64 } else { 40 } {
            return None;
        }
        let table = Section {
            kind: 0,
            offset,
            size: entry_size.checked_mul(count)?,
            link: 0,
        }
        .read(file)?;
        let field = |at: u64, wide_at: u64| if self.wide { wide_at } else { at };
        (0..count)
            .map(|i| {
                let base = i * entry_size;
                Some(Section {
                    kind: self.u32(&table, base + 4)?,
                    offset: self.word(&table, base + field(16, 24))?,
                    size: self.word(&table, base + field(20, 32))?,
                    link: self.u32(&table, base + field(24, 40))?,
                })
            })
            .collect()
    }

    /// The `DT_NEEDED` names of a dynamic section.
    fn needed(self, dynamic: &[u8], strings: &[u8]) -> Vec<String> {
        let entry = if self.wide { 16 } else { 8 };
        let word = entry / 2;
        (0..(dynamic.len() as u64 / entry).min(MAX_ENTRIES as u64))
            .map_while(|i| {
                let tag = self.word(dynamic, i * entry)?;
                let value = self.word(dynamic, i * entry + word)?;
                (tag != 0).then_some((tag, value))
            })
            .filter(|(tag, _)| *tag == DT_NEEDED)
            .filter_map(|(_, at)| string(strings, at))
            .collect()
    }

    /// The newest `GLIBC_x.y` among the versions a `.gnu.version_r` section needs.
    fn newest_glibc(self, verneed: &[u8], strings: &[u8]) -> Option<(u32, u32)> {
        let mut newest = None;
        let mut need = 0u64;
        for _ in 0..MAX_ENTRIES {
            let count = self.u16(verneed, need + 2)?;
            let mut aux = need + u64::from(self.u32(verneed, need + 8)?);
            for _ in 0..count {
                let name = string(strings, u64::from(self.u32(verneed, aux + 8)?));
                newest = newest.max(name.as_deref().and_then(glibc_version));
                match self.u32(verneed, aux + 12)? {
                    0 => break,
                    next => aux += u64::from(next),
                }
            }
            match self.u32(verneed, need + 12)? {
                0 => break,
                next => need += u64::from(next),
            }
        }
        newest
    }
}

/// The NUL-terminated string at `at` of a string table.
fn string(strings: &[u8], at: u64) -> Option<String> {
    let rest = strings.get(usize::try_from(at).ok()?..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// `(2, 29)` from `GLIBC_2.29`; `None` for `GLIBC_PRIVATE` and other names.
pub fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.strip_prefix("GLIBC_")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// The CPU an `e_machine` value stands for, as `uname -m` names it.
pub fn machine_name(machine: u16) -> String {
    match machine {
        3 => "i386".into(),
        8 => "mips".into(),
        20 => "ppc".into(),
        21 => "ppc64".into(),
        22 => "s390x".into(),
        40 => "arm".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv64".into(),
        258 => "loongarch64".into(),
        other => format!("ELF machine {other}"),
    }
}

/// The `e_machine` of binaries for a CPU as `uname -m` names it.
pub fn machine_of(arch: &str) -> Option<u16> {
    Some(match arch {
        "x86_64" | "amd64" => 62,
        "aarch64" | "arm64" => 183,
        "i386" | "i486" | "i586" | "i686" => 3,
        "riscv64" => 243,
        "ppc64" | "ppc64le" => 21,
        "s390x" => 22,
        "loongarch64" => 258,
        arm if arm.starts_with("arm") => 40,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::sample_elf as elf;

    fn needs_of(bytes: &[u8]) -> Result<Needs, NotElf> {
        read(bytes)
    }

    #[test]
    fn machine_libraries_and_the_newest_glibc_are_read() {
        let bytes = elf(
            183,
            &["libc.so.6", "libstdc++.so.6"],
            &["GLIBC_2.17", "GLIBC_2.29", "GLIBC_PRIVATE", "GLIBC_2.3.4"],
        );
        assert_eq!(
            needs_of(&bytes),
            Ok(Needs {
                machine: 183,
                needed: vec!["libc.so.6".into(), "libstdc++.so.6".into()],
                glibc: Some((2, 29)),
            })
        );
    }

    #[test]
    fn the_addon_of_this_test_binary_is_read() {
        let exe = File::open(std::env::current_exe().unwrap()).unwrap();
        let needs = read(&exe).unwrap();
        assert_eq!(Some(needs.machine), machine_of(std::env::consts::ARCH));
        assert!(needs.needed.iter().any(|n| n == "libc.so.6"), "{needs:?}");
        assert!(needs.glibc >= Some((2, 2)), "{needs:?}");
    }

    #[test]
    fn other_files_are_not_elf() {
        assert_eq!(needs_of(b"\xcf\xfa\xed\xfe\x0c\0\0\x01"), Err(NotElf));
        assert_eq!(needs_of(b""), Err(NotElf));
        assert_eq!(needs_of(b"\x7fELF"), Err(NotElf));
    }

    /// Every truncation and every single-byte corruption of a valid file
    /// reads without panicking.
    #[test]
    fn damaged_files_never_panic() {
        let bytes = elf(62, &["libc.so.6"], &["GLIBC_2.28", "GLIBC_2.34"]);
        for len in 0..bytes.len() {
            let _ = needs_of(&bytes[..len]);
        }
        for at in 0..bytes.len() {
            for value in [0u8, 0x7f, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] = value;
                let _ = needs_of(&damaged);
            }
        }
    }

    #[test]
    fn glibc_versions_are_parsed() {
        assert_eq!(glibc_version("GLIBC_2.29"), Some((2, 29)));
        assert_eq!(glibc_version("GLIBC_2.3.4"), Some((2, 3)));
        assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
        assert_eq!(glibc_version("GLIBCXX_3.4.29"), None);
    }

    #[test]
    fn machines_match_uname() {
        for arch in ["x86_64", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x"] {
            let machine = machine_of(arch).unwrap();
            assert!(arch.starts_with(&machine_name(machine)), "{arch}");
        }
    }
}
