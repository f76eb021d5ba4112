//! The architectures a filter covers and their syscall numbers, by name as libseccomp names them.
//!
//! The numbers come from the `syscalls` crate's per-architecture tables (generated from the
//! kernel's). Where its names or numbers differ from libseccomp's (which OCI profiles use), this
//! file says so and corrects them; a name an architecture does not have resolves to `None` and the
//! rule skips it there, as libseccomp does.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::OnceLock;

use oci_spec::runtime::Arch as OciArch;

/// `AUDIT_ARCH_*` values the kernel puts in `seccomp_data.arch`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// x32 system calls run under `AUDIT_ARCH_X86_64` with this bit set in the number.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The number of `name` in one of the `syscalls` crate's tables (`Sysno` is a distinct type per
/// architecture, with inherent methods only).
macro_rules! number {
    ($table:ident, $name:expr) => {
        syscalls::$table::Sysno::from_str($name)
            .ok()
            .and_then(|sysno| u32::try_from(sysno.id()).ok())
    };
}

/// An architecture bramble can filter: the native one and the compat ABIs its kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Arch {
    X86_64,
    X86,
    X32,
    Aarch64,
    Arm,
}

impl Arch {
    /// The architecture bramble was built for (always in the filter, as libseccomp always
    /// includes the native one).
    pub(crate) fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else if cfg!(target_arch = "x86") {
            Some(Arch::X86)
        } else if cfg!(target_arch = "arm") {
            Some(Arch::Arm)
        } else {
            None
        }
    }

    /// Whether processes of this architecture can run on a kernel built like this binary (an
    /// arm64 kernel runs 32-bit ARM processes, an x86_64 kernel runs i386 and x32 ones). Profile
    /// architectures that cannot run here need no section: no process can present them.
    pub(crate) fn runs_here(self) -> bool {
        match Arch::native() {
            Some(Arch::X86_64) => matches!(self, Arch::X86_64 | Arch::X86 | Arch::X32),
            Some(Arch::Aarch64) => matches!(self, Arch::Aarch64 | Arch::Arm),
            Some(native) => self == native,
            None => false,
        }
    }

    /// The architecture an OCI profile names, if bramble knows its syscall table.
    pub(crate) fn from_oci(arch: OciArch) -> Option<Arch> {
        match arch {
            OciArch::ScmpArchNative => Arch::native(),
            OciArch::ScmpArchX86_64 => Some(Arch::X86_64),
            OciArch::ScmpArchX86 => Some(Arch::X86),
            OciArch::ScmpArchX32 => Some(Arch::X32),
            OciArch::ScmpArchAarch64 => Some(Arch::Aarch64),
            OciArch::ScmpArchArm => Some(Arch::Arm),
            _ => None,
        }
    }

    /// The value of `seccomp_data.arch` for processes of this architecture.
    pub(crate) fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 | Arch::X32 => AUDIT_ARCH_X86_64,
            Arch::X86 => AUDIT_ARCH_I386,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
            Arch::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// Whether syscall arguments are 64 bits wide. libseccomp compares only the low 32 bits on
    /// 32-bit ABIs (x32 included), and so does bramble.
    pub(crate) fn has_64bit_args(self) -> bool {
        matches!(self, Arch::X86_64 | Arch::Aarch64)
    }

    /// The number `seccomp_data.nr` holds for the syscall `name` on this architecture.
    pub(crate) fn syscall_number(self, name: &str) -> Option<u32> {
        self.numbers().get(name).copied()
    }

    /// This architecture's names → numbers, built once: the crate's lookup is a linear match
    /// on the name, and a profile looks up some 400 names per architecture.
    fn numbers(self) -> &'static HashMap<&'static str, u32> {
        static TABLES: [OnceLock<HashMap<&'static str, u32>>; 5] = [const { OnceLock::new() }; 5];
        TABLES[self as usize].get_or_init(|| {
            let crate_names = syscalls::x86_64::Sysno::iter()
                .map(|sysno| sysno.name())
                .chain(syscalls::x86::Sysno::iter().map(|sysno| sysno.name()))
                .chain(syscalls::aarch64::Sysno::iter().map(|sysno| sysno.name()))
                .chain(syscalls::arm::Sysno::iter().map(|sysno| sysno.name()));
            let own_names = ["newfstatat"]
                .into_iter()
                .chain(ARM_PRIVATE.iter().map(|(name, _)| *name))
                .chain(X32_OWN.iter().map(|(name, _)| *name));
            crate_names
                .chain(own_names)
                .filter_map(|name| Some((name, self.lookup(name)?)))
                .collect()
        })
    }

    /// The number of `name`, from the crate's tables and the corrections below.
    fn lookup(self, name: &str) -> Option<u32> {
        match self {
            Arch::X86_64 => number!(x86_64, name),
            Arch::X86 => number!(x86, name),
            Arch::X32 => x32_number(name).map(|nr| nr | X32_SYSCALL_BIT),
            Arch::Aarch64 => aarch64_number(name),
            Arch::Arm => arm_number(name),
        }
    }
}

/// aarch64 (asm-generic numbering). The crate names 79 `fstatat` where the kernel's 64-bit name
/// (and libseccomp's) is `newfstatat`; and it lists the 32-bit-only `*_time64` calls (403–423),
/// which asm-generic defines only where `__BITS_PER_LONG == 32`: aarch64 has no such syscalls.
fn aarch64_number(name: &str) -> Option<u32> {
    if name == "newfstatat" {
        return Some(79);
    }
    let nr = number!(aarch64, name)?;
    if name == "fstatat" || (403..=423).contains(&nr) {
        return None;
    }
    Some(nr)
}

/// 32-bit ARM (EABI). The crate's table lacks the ARM-private calls (`__ARM_NR_BASE` 0x0f0000 +
/// n in the kernel's `arch/arm/include/uapi/asm/unistd.h`).
fn arm_number(name: &str) -> Option<u32> {
    const ARM_NR_BASE: u32 = 0x0f_0000;
    match ARM_PRIVATE.iter().find(|(private, _)| *private == name) {
        Some((_, n)) => Some(ARM_NR_BASE + n),
        None => number!(arm, name),
    }
}

/// ARM-private calls, numbered from `__ARM_NR_BASE`.
const ARM_PRIVATE: &[(&str, u32)] = &[
    ("breakpoint", 1),
    ("cacheflush", 2),
    ("usr26", 3),
    ("usr32", 4),
    ("set_tls", 5),
    ("get_tls", 6),
];

/// x32 numbers (before `X32_SYSCALL_BIT`), from `arch/x86/entry/syscalls/syscall_64.tbl`: the
/// "common" entries share x86_64's numbers; the "64" entries do not exist for x32, and those with
/// pointer-size differences have their own numbers from 512.
fn x32_number(name: &str) -> Option<u32> {
    /// x86_64 numbers whose table entry is "64" (native only).
    const NATIVE_ONLY: &[u32] = &[
        13, 15, 16, 19, 20, 45, 46, 47, 54, 55, 59, 101, 127, 128, 129, 131, 134, 156, 174, 177,
        178, 180, 205, 206, 209, 211, 214, 215, 222, 236, 244, 246, 247, 273, 274, 278, 279, 295,
        296, 297, 299, 307, 310, 311, 322, 327, 328,
    ];
    if let Some((_, nr)) = X32_OWN.iter().find(|(own, _)| *own == name) {
        return Some(*nr);
    }
    let nr = number!(x86_64, name)?;
    (!NATIVE_ONLY.contains(&nr)).then_some(nr)
}

/// x32 calls with numbers of their own (`syscall_64.tbl` entries marked "x32").
const X32_OWN: &[(&str, u32)] = &[
    ("rt_sigaction", 512),
    ("rt_sigreturn", 513),
    ("ioctl", 514),
    ("readv", 515),
    ("writev", 516),
    ("recvfrom", 517),
    ("sendmsg", 518),
    ("recvmsg", 519),
    ("execve", 520),
    ("ptrace", 521),
    ("rt_sigpending", 522),
    ("rt_sigtimedwait", 523),
    ("rt_sigqueueinfo", 524),
    ("sigaltstack", 525),
    ("timer_create", 526),
    ("mq_notify", 527),
    ("kexec_load", 528),
    ("waitid", 529),
    ("set_robust_list", 530),
    ("get_robust_list", 531),
    ("vmsplice", 532),
    ("move_pages", 533),
    ("preadv", 534),
    ("pwritev", 535),
    ("rt_tgsigqueueinfo", 536),
    ("recvmmsg", 537),
    ("sendmmsg", 538),
    ("process_vm_readv", 539),
    ("process_vm_writev", 540),
    ("setsockopt", 541),
    ("getsockopt", 542),
    ("io_setup", 543),
    ("io_submit", 544),
    ("execveat", 545),
    ("preadv2", 546),
    ("pwritev2", 547),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_libseccomp_names() {
        assert_eq!(Arch::Aarch64.syscall_number("newfstatat"), Some(79));
        assert_eq!(Arch::Aarch64.syscall_number("fstatat"), None);
        assert_eq!(Arch::Aarch64.syscall_number("clock_gettime64"), None);
        assert_eq!(Arch::Aarch64.syscall_number("clone3"), Some(435));
        assert_eq!(Arch::Aarch64.syscall_number("open"), None);
        assert_eq!(Arch::Arm.syscall_number("set_tls"), Some(0x0f_0005));
        assert_eq!(Arch::Arm.syscall_number("clock_gettime64"), Some(403));
        assert_eq!(Arch::Arm.syscall_number("socket"), Some(281));
        assert_eq!(Arch::X86_64.syscall_number("socket"), Some(41));
        assert_eq!(Arch::X86.syscall_number("socketcall"), Some(102));
        assert_eq!(
            Arch::X32.syscall_number("execve"),
            Some(520 | X32_SYSCALL_BIT)
        );
        assert_eq!(Arch::X32.syscall_number("read"), Some(X32_SYSCALL_BIT));
        assert_eq!(Arch::X32.syscall_number("epoll_ctl_old"), None);
        assert_eq!(Arch::X86_64.syscall_number("no_such_call"), None);
    }

    #[test]
    fn native_syscall_numbers_match_libc() {
        let native = Arch::native().expect("a supported build architecture");
        for (name, nr) in [
            ("getpid", libc::SYS_getpid),
            ("socket", libc::SYS_socket),
            ("clone3", libc::SYS_clone3),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("personality", libc::SYS_personality),
        ] {
            assert_eq!(native.syscall_number(name), Some(nr as u32), "{name}");
        }
    }
}
