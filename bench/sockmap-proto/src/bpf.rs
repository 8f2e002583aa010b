//! Minimal raw bpf(2) wrapper: map create/update/delete, program load, program attach.

use std::io;
use std::os::fd::RawFd;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
pub const BPF_PROG_TYPE_SK_SKB: u32 = 14;
pub const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
pub const BPF_SK_SKB_VERDICT: u32 = 38;

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_SK_REDIRECT_MAP: i32 = 52;

// __sk_buff offsets (from /usr/include/linux/bpf.h, checked with offsetof)
const OFF_REMOTE_IP4: i16 = 92;
const OFF_LOCAL_IP4: i16 = 96;
const OFF_REMOTE_PORT: i16 = 132;
const OFF_LOCAL_PORT: i16 = 136;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8, // dst low nibble, src high nibble
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (dst & 0xf) | (src << 4), off, imm }
}

fn mov64_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
fn mov64_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
fn ldxw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
fn stxw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x63, dst, src, off, 0)
}
fn add64_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
fn ld_map_fd(dst: u8, fd: RawFd) -> [Insn; 2] {
    // BPF_LD | BPF_DW | BPF_IMM with src = BPF_PSEUDO_MAP_FD (1)
    [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}
fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}

unsafe fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 144]) -> io::Result<i64> {
    let r = libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32);
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

fn put32(a: &mut [u8; 144], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put64(a: &mut [u8; 144], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

pub fn map_create(map_type: u32, key_size: u32, value_size: u32, max: u32) -> io::Result<RawFd> {
    let mut a = [0u8; 144];
    put32(&mut a, 0, map_type);
    put32(&mut a, 4, key_size);
    put32(&mut a, 8, value_size);
    put32(&mut a, 12, max);
    Ok(unsafe { sys_bpf(BPF_MAP_CREATE, &mut a)? } as RawFd)
}

pub fn map_update(map: RawFd, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut a = [0u8; 144];
    put32(&mut a, 0, map as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_ptr() as u64);
    put64(&mut a, 24, flags);
    unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a)? };
    Ok(())
}

pub fn map_delete(map: RawFd, key: &[u8]) -> io::Result<()> {
    let mut a = [0u8; 144];
    put32(&mut a, 0, map as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    unsafe { sys_bpf(BPF_MAP_DELETE_ELEM, &mut a)? };
    Ok(())
}

/// Verdict program: key = (remote_ip4, local_ip4, remote_port, local_port) of the receiving
/// socket; idx = hash[key]; if found redirect to egress of sockmap[idx], else SK_PASS.
pub fn verdict_program(hash_fd: RawFd, sockmap_fd: RawFd) -> Vec<Insn> {
    let mut p = vec![
        mov64_reg(6, 1),
        ldxw(2, 6, OFF_REMOTE_IP4),
        stxw(10, 2, -16),
        ldxw(2, 6, OFF_LOCAL_IP4),
        stxw(10, 2, -12),
        ldxw(2, 6, OFF_REMOTE_PORT),
        stxw(10, 2, -8),
        ldxw(2, 6, OFF_LOCAL_PORT),
        stxw(10, 2, -4),
    ];
    p.extend(ld_map_fd(1, hash_fd)); // 9,10
    p.extend([
        mov64_reg(2, 10),               // 11
        add64_imm(2, -16),              // 12
        call(BPF_FUNC_MAP_LOOKUP_ELEM), // 13
        jeq_imm(0, 0, 7),               // 14 -> 22
        ldxw(3, 0, 0),                  // 15
        mov64_reg(1, 6),                // 16
    ]);
    p.extend(ld_map_fd(2, sockmap_fd)); // 17,18
    p.extend([
        mov64_imm(4, 0),               // 19 flags 0 = egress
        call(BPF_FUNC_SK_REDIRECT_MAP), // 20
        exit(),                        // 21
        mov64_imm(0, 1),               // 22 SK_PASS
        exit(),                        // 23
    ]);
    p
}

pub fn prog_load(prog_type: u32, insns: &[Insn], expected_attach: u32) -> Result<RawFd, String> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 20];
    let mut a = [0u8; 144];
    put32(&mut a, 0, prog_type);
    put32(&mut a, 4, insns.len() as u32);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    put32(&mut a, 24, 1); // log_level
    put32(&mut a, 28, log.len() as u32);
    put64(&mut a, 32, log.as_mut_ptr() as u64);
    put32(&mut a, 68, expected_attach);
    match unsafe { sys_bpf(BPF_PROG_LOAD, &mut a) } {
        Ok(fd) => Ok(fd as RawFd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(format!("BPF_PROG_LOAD: {e}\nverifier log:\n{}", String::from_utf8_lossy(&log[..end])))
        }
    }
}

pub fn prog_attach(target_fd: RawFd, prog_fd: RawFd, attach_type: u32) -> io::Result<()> {
    let mut a = [0u8; 144];
    put32(&mut a, 0, target_fd as u32);
    put32(&mut a, 4, prog_fd as u32);
    put32(&mut a, 8, attach_type);
    unsafe { sys_bpf(BPF_PROG_ATTACH, &mut a)? };
    Ok(())
}
