//! Which TUN queue the kernel hands each outgoing packet to.
//!
//! Left alone, a multiqueue TUN device moves a flow to the queue that last
//! *wrote* a packet of it ("automatic flow steering"). ringlink writes a
//! peer's packets from whichever worker received them, so a flow's first
//! reply moves it to another worker while older packets of the flow are
//! still queued on the first: they get overtaken, and TCP sees reordering.
//!
//! A steering program replaces that: the kernel runs it on every packet
//! and takes the returned value modulo the queue count. This one hashes the
//! addresses and the first transport word (the ports, for TCP and UDP), so
//! a flow stays on one queue for its whole life, whatever the replies do.
//! It reads the packet itself rather than `skb->hash`, which is zero for
//! traffic a gateway forwards and would put every such flow on queue 0.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `_IOR('T', 224, int)` from linux/if_tun.h.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `struct bpf_insn`: opcode, dst/src register nibbles, offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off: 0,
        imm,
    }
}

// Opcodes: 64-bit ALU with register or immediate operand, packet load.
const MOV_X: u8 = 0xbf;
const XOR_X: u8 = 0xaf;
const RSH_K: u8 = 0x77;
const LD_ABS_W: u8 = 0x20;
const EXIT: u8 = 0x95;

/// r0 = fold(saddr ^ daddr ^ first transport word). LD_ABS wants the
/// context in r6, and ends the program with 0 if the packet is too short.
const PROGRAM: [Insn; 11] = [
    insn(MOV_X, 6, 1, 0),
    insn(LD_ABS_W, 0, 0, 12),
    insn(MOV_X, 7, 0, 0),
    insn(LD_ABS_W, 0, 0, 16),
    insn(XOR_X, 7, 0, 0),
    insn(LD_ABS_W, 0, 0, 20),
    insn(XOR_X, 7, 0, 0),
    insn(MOV_X, 0, 7, 0),
    insn(RSH_K, 0, 0, 16),
    insn(XOR_X, 0, 7, 0),
    insn(EXIT, 0, 0, 0),
];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

fn load_program() -> io::Result<OwnedFd> {
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: attr is a valid prefix of bpf_attr (the kernel zero-extends
    // a shorter struct) and the pointers in it outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach the flow-hash steering program to the device behind `queue`.
/// The device keeps its own reference, so nothing needs to stay open.
pub fn steer_flows_by_hash(queue: BorrowedFd<'_>) -> io::Result<()> {
    let prog = load_program()?;
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads an int (the program fd).
    let rc = unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETSTEERINGEBPF, &fd) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let i = insn(MOV_X, 6, 1, 0);
        assert_eq!((i.code, i.regs), (0xbf, 0x16));
    }

    /// The kernel's verifier accepts the program. Loading BPF needs root
    /// (CAP_BPF), so a refusal for lack of it fails the test like any other.
    #[test]
    #[ignore = "needs root"]
    fn verifier_accepts_the_program() {
        if let Err(e) = load_program() {
            panic!("BPF_PROG_LOAD refused the steering program: {e}");
        }
    }
}
