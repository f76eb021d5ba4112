//! A classic BPF assembler for seccomp programs, written back to front so that every jump's
//! distance is known when the jump is written.
//!
//! Conditional jumps reach at most 255 instructions ahead (`jt`/`jf` are 8 bits). When a target
//! is farther, the assembler puts a trampoline right after the jump: a copy of the target when it
//! is a `ret` (as cheap as a jump), else an unconditional `ja`, whose 32-bit offset reaches
//! anywhere.

/// One `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub(crate) code: u16,
    pub(crate) jt: u8,
    pub(crate) jf: u8,
    pub(crate) k: u32,
}

// Instruction classes and fields (linux/bpf_common.h).
pub(crate) const BPF_LD: u16 = 0x00;
pub(crate) const BPF_ALU: u16 = 0x04;
pub(crate) const BPF_JMP: u16 = 0x05;
pub(crate) const BPF_RET: u16 = 0x06;
pub(crate) const BPF_W: u16 = 0x00;
pub(crate) const BPF_ABS: u16 = 0x20;
pub(crate) const BPF_AND: u16 = 0x50;
pub(crate) const BPF_JA: u16 = 0x00;
pub(crate) const BPF_JEQ: u16 = 0x10;
pub(crate) const BPF_JGT: u16 = 0x20;
pub(crate) const BPF_JGE: u16 = 0x30;
pub(crate) const BPF_K: u16 = 0x00;

/// The kernel's limit on a program's length (`BPF_MAXINSNS`).
pub(crate) const MAX_INSNS: usize = 4096;

/// A conditional jump's comparison of the accumulator with a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Gt,
    Ge,
}

/// A place in the program, counted from its end (the index in the reversed program).
pub(crate) type Label = usize;

/// The program being written, last instruction first.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    reversed: Vec<Insn>,
}

impl Assembler {
    /// The instruction written last, which runs right before everything written earlier: the
    /// fall-through target of the next one.
    fn top(&self) -> Option<Label> {
        self.reversed.len().checked_sub(1)
    }

    fn push(&mut self, insn: Insn) -> Label {
        self.reversed.push(insn);
        self.reversed.len() - 1
    }

    /// `ret k`.
    pub(crate) fn ret(&mut self, k: u32) -> Label {
        self.push(Insn {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k,
        })
    }

    /// Continue at `target`: nothing when it comes next, else an unconditional jump (or a copy
    /// of a `ret`).
    pub(crate) fn goto(&mut self, target: Label) -> Label {
        if self.top() == Some(target) {
            return target;
        }
        let insn = self.reversed[target];
        if insn.code == BPF_RET | BPF_K {
            return self.push(insn);
        }
        let offset = self.reversed.len() - target - 1;
        self.push(Insn {
            code: BPF_JMP | BPF_JA,
            jt: 0,
            jf: 0,
            k: offset as u32,
        })
    }

    /// `A = seccomp_data[offset]` (32 bits), then continue at `next`.
    pub(crate) fn load(&mut self, offset: u32, next: Label) -> Label {
        self.goto(next);
        self.push(Insn {
            code: BPF_LD | BPF_W | BPF_ABS,
            jt: 0,
            jf: 0,
            k: offset,
        })
    }

    /// `A &= mask`, then continue at `next`.
    pub(crate) fn and(&mut self, mask: u32, next: Label) -> Label {
        self.goto(next);
        self.push(Insn {
            code: BPF_ALU | BPF_AND | BPF_K,
            jt: 0,
            jf: 0,
            k: mask,
        })
    }

    /// `if A <cmp> k goto yes else goto no`.
    pub(crate) fn jump(&mut self, cmp: Cmp, k: u32, mut yes: Label, mut no: Label) -> Label {
        if yes == no {
            return self.goto(yes);
        }
        loop {
            let here = self.reversed.len();
            let (to_yes, to_no) = (here - yes - 1, here - no - 1);
            if to_yes <= usize::from(u8::MAX) && to_no <= usize::from(u8::MAX) {
                let op = match cmp {
                    Cmp::Eq => BPF_JEQ,
                    Cmp::Gt => BPF_JGT,
                    Cmp::Ge => BPF_JGE,
                };
                return self.push(Insn {
                    code: BPF_JMP | op | BPF_K,
                    jt: to_yes as u8,
                    jf: to_no as u8,
                    k,
                });
            }
            // A trampoline for the farther target; the loop checks the other one again (it
            // moved one instruction farther).
            if to_yes >= to_no {
                yes = self.force_trampoline(yes);
            } else {
                no = self.force_trampoline(no);
            }
        }
    }

    /// A new instruction that goes to `target` (unlike `goto`, never the target itself).
    fn force_trampoline(&mut self, target: Label) -> Label {
        let insn = self.reversed[target];
        if insn.code == BPF_RET | BPF_K {
            return self.push(insn);
        }
        let offset = self.reversed.len() - target - 1;
        self.push(Insn {
            code: BPF_JMP | BPF_JA,
            jt: 0,
            jf: 0,
            k: offset as u32,
        })
    }

    /// The program in execution order; `entry` must be the last label written.
    pub(crate) fn finish(mut self, entry: Label) -> Vec<Insn> {
        debug_assert_eq!(self.top(), Some(entry), "the entry point runs first");
        self.reversed.reverse();
        self.reversed
    }
}

/// Runs a seccomp program on one `seccomp_data` the way the kernel does, for tests.
#[cfg(test)]
pub(crate) fn run(program: &[Insn], data: &[u8; 64]) -> Result<u32, String> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = program.get(pc).ok_or(format!("ran off the end at {pc}"))?;
        let class = insn.code & 0x07;
        match class {
            c if c == BPF_LD => {
                if insn.code != BPF_LD | BPF_W | BPF_ABS || insn.k % 4 != 0 || insn.k > 60 {
                    return Err(format!("bad load {insn:?}"));
                }
                let at = insn.k as usize;
                let bytes = [data[at], data[at + 1], data[at + 2], data[at + 3]];
                a = u32::from_ne_bytes(bytes);
                pc += 1;
            }
            c if c == BPF_ALU => {
                if insn.code != BPF_ALU | BPF_AND | BPF_K {
                    return Err(format!("unexpected ALU {insn:?}"));
                }
                a &= insn.k;
                pc += 1;
            }
            c if c == BPF_JMP => {
                let op = insn.code & 0xf0;
                if op == BPF_JA {
                    pc += 1 + insn.k as usize;
                    continue;
                }
                let taken = match op {
                    o if o == BPF_JEQ => a == insn.k,
                    o if o == BPF_JGT => a > insn.k,
                    o if o == BPF_JGE => a >= insn.k,
                    _ => return Err(format!("unexpected jump {insn:?}")),
                };
                pc += 1 + usize::from(if taken { insn.jt } else { insn.jf });
            }
            c if c == BPF_RET => return Ok(insn.k),
            _ => return Err(format!("unexpected instruction {insn:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_targets_get_trampolines() {
        let mut asm = Assembler::default();
        let allow = asm.ret(1);
        let mut next = asm.ret(2);
        // 600 instructions between the jump below and `allow`.
        for k in 0..300 {
            let deny = asm.ret(3);
            next = asm.jump(Cmp::Eq, 1000 + k, deny, next);
        }
        let far = asm.jump(Cmp::Eq, 7, allow, next);
        let entry = asm.load(0, far);
        let program = asm.finish(entry);
        let mut data = [0u8; 64];
        data[..4].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(run(&program, &data), Ok(1));
        data[..4].copy_from_slice(&1005u32.to_ne_bytes());
        assert_eq!(run(&program, &data), Ok(3));
        data[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(run(&program, &data), Ok(2));
    }
}
