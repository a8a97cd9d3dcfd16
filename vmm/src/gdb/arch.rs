//! The register set the stub shows gdb: x86-64's core and SSE registers
//! (gdbstub_arch's layout), then the FS/GS bases and the control
//! registers, described to gdb by the target description below.
//!
//! gdbstub_arch's own x86-64 description names no register, so gdb falls
//! back to its built-in list, which has no control registers: this one
//! lists every register so that `info registers cr3` works.

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::X86_64CoreRegs;

/// x86-64 as a Torito guest shows it.
pub enum ToritoX86_64 {}

impl Arch for ToritoX86_64 {
    type Usize = u64;
    type Registers = Regs;
    type BreakpointKind = usize;
    type RegId = gdbstub_arch::x86::reg::id::X86_64CoreRegId;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// One vCPU's registers as gdb reads and writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// General, flags, segment selectors, x87 and SSE.
    pub core: X86_64CoreRegs,
    /// FS base.
    pub fs_base: u64,
    /// GS base (the kernel's per-core block).
    pub gs_base: u64,
    /// CR0.
    pub cr0: u64,
    /// CR2 (the last page fault's address).
    pub cr2: u64,
    /// CR3 (the page tables).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Bytes of the core and SSE registers in a `g` packet.
const CORE_LEN: usize = 0x218;
const EXTRA: usize = 7;

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for v in self.extra() {
            v.to_le_bytes().into_iter().for_each(|b| write_byte(Some(b)));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != CORE_LEN + EXTRA * 8 {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE_LEN])?;
        let mut v = [0u64; EXTRA];
        for (d, c) in v.iter_mut().zip(bytes[CORE_LEN..].chunks_exact(8)) {
            *d = u64::from_le_bytes(c.try_into().map_err(|_| ())?);
        }
        [self.fs_base, self.gs_base, self.cr0, self.cr2, self.cr3, self.cr4, self.efer] = v;
        Ok(())
    }
}

impl Regs {
    fn extra(&self) -> [u64; EXTRA] {
        [self.fs_base, self.gs_base, self.cr0, self.cr2, self.cr3, self.cr4, self.efer]
    }
}

/// The registers in `g`-packet order: gdb numbers them as listed.
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/>
    <field name="PF" start="2" end="2"/>
    <field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/>
    <field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/>
    <field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/>
    <field name="OF" start="11" end="11"/>
    <field name="RF" start="16" end="16"/>
    <field name="AC" start="18" end="18"/>
  </flags>
  <reg name="rax" bitsize="64" type="int64"/>
  <reg name="rbx" bitsize="64" type="int64"/>
  <reg name="rcx" bitsize="64" type="int64"/>
  <reg name="rdx" bitsize="64" type="int64"/>
  <reg name="rsi" bitsize="64" type="int64"/>
  <reg name="rdi" bitsize="64" type="int64"/>
  <reg name="rbp" bitsize="64" type="data_ptr"/>
  <reg name="rsp" bitsize="64" type="data_ptr"/>
  <reg name="r8" bitsize="64" type="int64"/>
  <reg name="r9" bitsize="64" type="int64"/>
  <reg name="r10" bitsize="64" type="int64"/>
  <reg name="r11" bitsize="64" type="int64"/>
  <reg name="r12" bitsize="64" type="int64"/>
  <reg name="r13" bitsize="64" type="int64"/>
  <reg name="r14" bitsize="64" type="int64"/>
  <reg name="r15" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="i386_eflags"/>
  <reg name="cs" bitsize="32" type="int32"/>
  <reg name="ss" bitsize="32" type="int32"/>
  <reg name="ds" bitsize="32" type="int32"/>
  <reg name="es" bitsize="32" type="int32"/>
  <reg name="fs" bitsize="32" type="int32"/>
  <reg name="gs" bitsize="32" type="int32"/>
  <reg name="st0" bitsize="80" type="i387_ext"/>
  <reg name="st1" bitsize="80" type="i387_ext"/>
  <reg name="st2" bitsize="80" type="i387_ext"/>
  <reg name="st3" bitsize="80" type="i387_ext"/>
  <reg name="st4" bitsize="80" type="i387_ext"/>
  <reg name="st5" bitsize="80" type="i387_ext"/>
  <reg name="st6" bitsize="80" type="i387_ext"/>
  <reg name="st7" bitsize="80" type="i387_ext"/>
  <reg name="fctrl" bitsize="32" type="int" group="float"/>
  <reg name="fstat" bitsize="32" type="int" group="float"/>
  <reg name="ftag" bitsize="32" type="int" group="float"/>
  <reg name="fiseg" bitsize="32" type="int" group="float"/>
  <reg name="fioff" bitsize="32" type="int" group="float"/>
  <reg name="foseg" bitsize="32" type="int" group="float"/>
  <reg name="fooff" bitsize="32" type="int" group="float"/>
  <reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <reg name="xmm0" bitsize="128" type="vec128"/>
  <reg name="xmm1" bitsize="128" type="vec128"/>
  <reg name="xmm2" bitsize="128" type="vec128"/>
  <reg name="xmm3" bitsize="128" type="vec128"/>
  <reg name="xmm4" bitsize="128" type="vec128"/>
  <reg name="xmm5" bitsize="128" type="vec128"/>
  <reg name="xmm6" bitsize="128" type="vec128"/>
  <reg name="xmm7" bitsize="128" type="vec128"/>
  <reg name="xmm8" bitsize="128" type="vec128"/>
  <reg name="xmm9" bitsize="128" type="vec128"/>
  <reg name="xmm10" bitsize="128" type="vec128"/>
  <reg name="xmm11" bitsize="128" type="vec128"/>
  <reg name="xmm12" bitsize="128" type="vec128"/>
  <reg name="xmm13" bitsize="128" type="vec128"/>
  <reg name="xmm14" bitsize="128" type="vec128"/>
  <reg name="xmm15" bitsize="128" type="vec128"/>
  <reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
  <reg name="fs_base" bitsize="64" type="int"/>
  <reg name="gs_base" bitsize="64" type="int"/>
</feature>
<feature name="org.torito.x86.system">
  <reg name="cr0" bitsize="64" type="int" group="system"/>
  <reg name="cr2" bitsize="64" type="data_ptr" group="system"/>
  <reg name="cr3" bitsize="64" type="int" group="system"/>
  <reg name="cr4" bitsize="64" type="int" group="system"/>
  <reg name="efer" bitsize="64" type="int" group="system"/>
</feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_through_a_g_packet() {
        let mut r =
            Regs { fs_base: 1, gs_base: 2, cr0: 3, cr2: 4, cr3: 5, cr4: 6, efer: 7, ..Regs::default() };
        r.core.regs = core::array::from_fn(|i| 100 + i as u64);
        r.core.rip = 0x10_2000;
        r.core.eflags = 0x202;
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), CORE_LEN + 56);
        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.gdb_deserialize(&bytes[..CORE_LEN]).is_err());
    }

    #[test]
    fn the_description_lists_every_serialized_register() {
        let regs = TARGET_XML.matches("<reg ").count();
        // 16 general + rip + eflags + 6 segments + 8 st + 8 x87 + 16 xmm + mxcsr + 7.
        assert_eq!(regs, 16 + 2 + 6 + 8 + 8 + 16 + 1 + EXTRA);
    }
}
