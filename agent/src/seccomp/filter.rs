//! An OCI seccomp profile compiled to a classic BPF program, and loading it into the calling
//! thread.
//!
//! The program's shape:
//!
//! ```text
//! A = arch;  one jump per architecture section;  else ret KILL_PROCESS   (libseccomp's "bad arch")
//! section:   A = nr;  (x86_64: nr >= 0x40000000 and != -1 → x32 section, or KILL_PROCESS)
//!            binary search over ranges of nr → ret <action>, or a per-syscall block
//! block:     rule 1's conditions (AND) → ret <its action>;  rule 2 …;  → unconditional action
//!            of the syscall if any, else ret <default action>
//! ```
//!
//! Semantics follow runc over libseccomp: names an architecture lacks are skipped; rules whose
//! action is the default action are dropped; a rule with several conditions on one argument
//! becomes one rule per condition (OR), others AND their conditions; conditional rules are tried
//! in profile order before a syscall's unconditional rule. Two unconditional rules with
//! different actions for one syscall are an error (libseccomp refuses them too).

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use super::arch::{Arch, X32_SYSCALL_BIT};
use super::bpf::{Assembler, Cmp, Insn, Label, MAX_INSNS};

// Return values (linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_DATA: u32 = 0x0000_ffff;

// seccomp(2) (linux/seccomp.h).
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;

// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

/// A compiled seccomp filter, ready to load. Compile it before `fork`/`clone` (it allocates);
/// `install` does not allocate and can run between fork and exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    program: Vec<Insn>,
    flags: u32,
}

/// One condition on a syscall argument, as BPF compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition {
    index: u32,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// The rules one syscall has on one architecture.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SyscallRules {
    /// Conditional rules in profile order: all conditions hold → the action.
    conditional: Vec<(Vec<Condition>, u32)>,
    /// The action when no conditional rule matched, if the profile gives one.
    unconditional: Option<u32>,
}

impl Filter {
    /// Compiles `profile` for the architectures this machine runs (the native one always, and the
    /// compat ones the profile lists). Refuses what bramble cannot enforce (`SCMP_ACT_NOTIFY`,
    /// argument indexes past 5), so a container never runs with less filtering than asked.
    pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, String> {
        let default_action = action_value(
            profile.default_action(),
            profile.default_errno_ret(),
            "defaultAction",
        )?;
        let native = Arch::native()
            .ok_or_else(|| "seccomp is not supported on this architecture".to_string())?;
        let mut arches = vec![native];
        for oci_arch in profile.architectures().iter().flatten() {
            if let Some(arch) = Arch::from_oci(*oci_arch) {
                if arch.runs_here() && !arches.contains(&arch) {
                    arches.push(arch);
                }
            }
        }
        arches.sort();

        let mut tables: BTreeMap<Arch, BTreeMap<u32, SyscallRules>> =
            arches.iter().map(|arch| (*arch, BTreeMap::new())).collect();
        for syscall in profile.syscalls().iter().flatten() {
            let action = action_value(syscall.action(), syscall.errno_ret(), "syscall action")
                .map_err(|err| format!("{err} (syscalls {:?})", syscall.names()))?;
            if action == default_action {
                continue;
            }
            let rules = rule_conditions(syscall.args().as_deref().unwrap_or_default())?;
            for name in syscall.names() {
                for (arch, table) in tables.iter_mut() {
                    let Some(nr) = arch.syscall_number(name) else {
                        continue;
                    };
                    let entry = table.entry(nr).or_default();
                    for conditions in &rules {
                        entry.add(conditions.clone(), action, name)?;
                    }
                }
            }
        }

        let mut flags = 0;
        for flag in profile.flags().iter().flatten() {
            flags |= match flag {
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                    SECCOMP_FILTER_FLAG_SPEC_ALLOW
                }
                // Only meaningful with a notification listener, which bramble refuses.
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
            };
        }

        let program = assemble(&tables, default_action);
        if program.len() > MAX_INSNS {
            return Err(format!(
                "seccomp profile too large: {} BPF instructions (the kernel's limit is {MAX_INSNS})",
                program.len()
            ));
        }
        Ok(Filter { program, flags })
    }

    /// The number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the program is empty (a compiled filter never is).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Loads the filter into the calling thread (all threads with `SECCOMP_FILTER_FLAG_TSYNC`)
    /// with seccomp(SECCOMP_SET_MODE_FILTER). The kernel requires `no_new_privs` or
    /// CAP_SYS_ADMIN in the caller's user namespace; without either it fails with EACCES. The
    /// filter stays for the process and its children, across execve.
    ///
    /// Allocates nothing and only makes the one system call, so it can run between fork and
    /// exec. With TSYNC, a thread that cannot be synchronised is reported as ESRCH.
    pub fn install(&self) -> std::io::Result<()> {
        let program = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `Insn` has `struct sock_filter`'s layout (repr(C), same fields); the kernel
        // copies the program during the call and keeps no pointer to it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                libc::c_ulong::from(self.flags),
                &program as *const libc::sock_fprog,
            )
        };
        match ret {
            0 => Ok(()),
            r if r < 0 => Err(std::io::Error::last_os_error()),
            _ => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    #[cfg(test)]
    pub(crate) fn program(&self) -> &[Insn] {
        &self.program
    }
}

impl SyscallRules {
    fn add(&mut self, conditions: Vec<Condition>, action: u32, name: &str) -> Result<(), String> {
        if !conditions.is_empty() {
            if !self.conditional.contains(&(conditions.clone(), action)) {
                self.conditional.push((conditions, action));
            }
            return Ok(());
        }
        match self.unconditional {
            Some(existing) if existing != action => Err(format!(
                "seccomp profile gives syscall {name:?} two different actions without conditions"
            )),
            _ => {
                self.unconditional = Some(action);
                Ok(())
            }
        }
    }
}

/// The `SECCOMP_RET_*` value of an OCI action; ERRNO and TRACE carry `errno_ret`, EPERM when
/// absent (runc).
fn action_value(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    what: &str,
) -> Result<u32, String> {
    let data = || {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        if value > RET_DATA {
            return Err(format!("{what}: errnoRet {value} is out of range"));
        }
        Ok(value)
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data()?,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data()?,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(format!(
            "{what}: SCMP_ACT_NOTIFY is not supported (bramble has no seccomp notification agent)"
        ))
        }
    })
}

/// The condition lists one OCI rule stands for: one list (AND) normally; one single-condition
/// rule per condition when an argument index repeats (runc's compatibility behaviour).
fn rule_conditions(args: &[LinuxSeccompArg]) -> Result<Vec<Vec<Condition>>, String> {
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let index = arg.index();
        if index > 5 {
            return Err(format!(
                "seccomp argument index {index} is out of range (syscalls have 6 arguments)"
            ));
        }
        conditions.push(Condition {
            index: index as u32,
            op: arg.op(),
            value: arg.value(),
            value_two: arg.value_two().unwrap_or(0),
        });
    }
    let repeats = conditions
        .iter()
        .enumerate()
        .any(|(i, c)| conditions[..i].iter().any(|d| d.index == c.index));
    Ok(if repeats {
        conditions.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conditions]
    })
}

/// Writes the program for the per-architecture rule tables.
fn assemble(
    tables: &BTreeMap<Arch, BTreeMap<u32, SyscallRules>>,
    default_action: u32,
) -> Vec<Insn> {
    let mut asm = Assembler::default();
    let bad_arch = asm.ret(RET_KILL_PROCESS);

    // Sections, each entered with nothing loaded. x32 has no section of its own: it runs only
    // on x86_64 kernels, where x86_64 is the native architecture and always has a section.
    let mut sections: Vec<(u32, Label)> = Vec::new();
    let x32_tree = tables
        .get(&Arch::X32)
        .map(|table| syscall_tree(&mut asm, Arch::X32, table, default_action));
    for (arch, table) in tables {
        if *arch == Arch::X32 {
            continue;
        }
        let mut tree = syscall_tree(&mut asm, *arch, table, default_action);
        if *arch == Arch::X86_64 {
            // x32 calls share x86_64's audit arch; keep them away from the 64-bit rules. -1 (a
            // tracer skipping the call) stays with the 64-bit rules, where nothing matches it.
            let x32 = x32_tree.unwrap_or(bad_arch);
            let not_minus_one = asm.jump(Cmp::Eq, u32::MAX, tree, x32);
            tree = asm.jump(Cmp::Ge, X32_SYSCALL_BIT, not_minus_one, tree);
        }
        let entry = asm.load(DATA_NR, tree);
        sections.push((arch.audit_arch(), entry));
    }

    let mut next = bad_arch;
    for (audit_arch, entry) in sections.iter().rev() {
        next = asm.jump(Cmp::Eq, *audit_arch, *entry, next);
    }
    let entry = asm.load(DATA_ARCH, next);
    asm.finish(entry)
}

/// What a run of syscall numbers leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A plain `ret`: numbers next to each other with the same action share one range.
    Ret(u32),
    /// A syscall's block of argument checks.
    Block(Label),
}

/// The binary search on `seccomp_data.nr` (already in A) for one architecture: over ranges of
/// numbers with the same outcome rather than over single numbers, so that runs of allowed
/// syscalls (and the gaps between them, which take the default action) cost one comparison.
fn syscall_tree(
    asm: &mut Assembler,
    arch: Arch,
    table: &BTreeMap<u32, SyscallRules>,
    default_action: u32,
) -> Label {
    // Blocks are written first: they come after the search in the program.
    let mut blocks: BTreeMap<u32, Label> = BTreeMap::new();
    for (nr, rules) in table.iter().rev() {
        if !rules.conditional.is_empty() {
            blocks.insert(*nr, syscall_block(asm, arch, rules, default_action));
        }
    }
    // (first number, outcome) from 0 up; each range ends where the next starts.
    let mut ranges: Vec<(u32, Outcome)> = Vec::new();
    let mut add = |start: u32, outcome: Outcome| {
        if ranges.last().map(|(_, last)| *last) != Some(outcome) {
            ranges.push((start, outcome));
        }
    };
    let mut next_nr = 0u32;
    for (nr, rules) in table {
        if *nr > next_nr {
            add(next_nr, Outcome::Ret(default_action));
        }
        let outcome = match blocks.get(nr) {
            Some(block) => Outcome::Block(*block),
            None => Outcome::Ret(rules.unconditional.unwrap_or(default_action)),
        };
        add(*nr, outcome);
        next_nr = nr.saturating_add(1);
    }
    add(next_nr, Outcome::Ret(default_action));
    let mut rets = BTreeMap::new();
    search(asm, &ranges, &mut rets)
}

/// A split on the middle range's first number, down to single ranges.
fn search(
    asm: &mut Assembler,
    ranges: &[(u32, Outcome)],
    rets: &mut BTreeMap<u32, Label>,
) -> Label {
    if let [(_, outcome)] = ranges {
        return match outcome {
            Outcome::Block(block) => *block,
            Outcome::Ret(action) => *rets.entry(*action).or_insert_with(|| asm.ret(*action)),
        };
    }
    let middle = ranges.len() / 2;
    let upper = search(asm, &ranges[middle..], rets);
    let lower = search(asm, &ranges[..middle], rets);
    asm.jump(Cmp::Ge, ranges[middle].0, upper, lower)
}

/// One syscall's rules: each conditional rule in order, then the unconditional action.
fn syscall_block(
    asm: &mut Assembler,
    arch: Arch,
    rules: &SyscallRules,
    default_action: u32,
) -> Label {
    let mut next = asm.ret(rules.unconditional.unwrap_or(default_action));
    for (conditions, action) in rules.conditional.iter().rev() {
        let mut matched = asm.ret(*action);
        for condition in conditions.iter().rev() {
            matched = condition_check(asm, arch, condition, matched, next);
        }
        next = matched;
    }
    next
}

/// Where the two 32-bit halves of argument `index` sit in `seccomp_data`.
fn arg_offsets(index: u32) -> (u32, u32) {
    let at = DATA_ARGS + 8 * index;
    if cfg!(target_endian = "little") {
        (at, at + 4)
    } else {
        (at + 4, at)
    }
}

/// Tests one condition: on to `yes` when it holds, else `no`. 64-bit arguments are compared
/// high word first; 32-bit ABIs compare the low word only.
fn condition_check(
    asm: &mut Assembler,
    arch: Arch,
    condition: &Condition,
    yes: Label,
    no: Label,
) -> Label {
    use LinuxSeccompOperator as Op;
    let (low_at, high_at) = arg_offsets(condition.index);
    let wide = arch.has_64bit_args();
    let (value_high, value_low) = ((condition.value >> 32) as u32, condition.value as u32);
    match condition.op {
        Op::ScmpCmpEq => equal(asm, wide, (low_at, high_at), condition.value, None, yes, no),
        Op::ScmpCmpNe => equal(asm, wide, (low_at, high_at), condition.value, None, no, yes),
        Op::ScmpCmpMaskedEq => equal(
            asm,
            wide,
            (low_at, high_at),
            condition.value_two,
            Some(condition.value),
            yes,
            no,
        ),
        // arg > v, arg >= v; arg < v is !(arg >= v) and arg <= v is !(arg > v).
        Op::ScmpCmpGt | Op::ScmpCmpGe | Op::ScmpCmpLt | Op::ScmpCmpLe => {
            let (low_cmp, yes, no) = match condition.op {
                Op::ScmpCmpGt => (Cmp::Gt, yes, no),
                Op::ScmpCmpGe => (Cmp::Ge, yes, no),
                Op::ScmpCmpLt => (Cmp::Ge, no, yes),
                _ => (Cmp::Gt, no, yes),
            };
            let low = asm.jump(low_cmp, value_low, yes, no);
            let low = asm.load(low_at, low);
            if !wide {
                return low;
            }
            let high_equal = asm.jump(Cmp::Eq, value_high, low, no);
            let high_greater = asm.jump(Cmp::Gt, value_high, yes, high_equal);
            asm.load(high_at, high_greater)
        }
    }
}

/// `(arg & mask) == value` (no mask: `arg == value`), word by word.
fn equal(
    asm: &mut Assembler,
    wide: bool,
    (low_at, high_at): (u32, u32),
    value: u64,
    mask: Option<u64>,
    yes: Label,
    no: Label,
) -> Label {
    let word = |asm: &mut Assembler, at: u32, shift: u32, next_yes: Label| {
        let value = (value >> shift) as u32;
        let check = asm.jump(Cmp::Eq, value, next_yes, no);
        let check = match mask {
            Some(mask) => asm.and((mask >> shift) as u32, check),
            None => check,
        };
        asm.load(at, check)
    };
    let low = word(asm, low_at, 0, yes);
    if wide {
        word(asm, high_at, 32, low)
    } else {
        low
    }
}
