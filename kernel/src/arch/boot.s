/* Torito boot section: descriptor tables, the 32->64-bit trampoline for
 * multiboot and PVH, and every CPL0 instruction the kernel runs.
 *
 * Everything in `.boot` is linked at BOOT_BASE (linker/torito.ld asserts
 * it). Interrupt and TSS descriptors split addresses into pieces, which no
 * relocation can express, so they are computed here at assembly time as
 * (label - boot_base + BOOT_BASE). The tables therefore exist in the file
 * exactly as the CPU reads them: no code fills them in at boot.
 *
 * CPL0 code is kept to short stubs because some KVM hosts (paravirtual,
 * shadow-paging) run every CPL0 instruction through an emulator.
 */
    .set BOOT_BASE, 0x101000
    .set KCODE, 0x08
    .set KDATA, 0x10
    .set UDATA, 0x1b            /* 0x18 | RPL 3 */
    .set UCODE, 0x23            /* 0x20 | RPL 3 */
    .set KCODE32, 0x28
    .set TSS_SEL, 0x30          /* core i's TSS: TSS_SEL + 16 * i */
    .set GATE_MAGIC, 0x54475445 /* r10d of a gate call: "ETGT" */
    .set GATE_OPS, 9
    .set TIMER_VECTOR, 0x40     /* torito_abi::boot_info::LAPIC_TIMER_VECTOR */
    .set WAKE_VECTOR, 0x41      /* inter-processor wake-up */
    .set LAPIC_EOI, 0xfee000b0
    .set GS_BASE_MSR, 0xc0000101
    .set DEBUG_TRAP, 0xc0000038 /* torito_abi: TORITO_MMIO_BASE + mmio::DEBUG_TRAP */

    /* Per-core state. Each core's GS base points at its block in
     * _torito_percpu (the monitor sets it; the 32-bit paths write the MSR),
     * so `%gs:` loads reach it from CPL3 and CPL0 alike. The offsets are
     * mirrored in kernel/src/arch/smp.rs. */
    .set MAX_CORES, 16
    .set PERCPU_STRIDE, 64
    .set PC_ID, 0               /* core index */
    .set PC_SELF, 8             /* address of this block */
    .set PC_WAKE, 16            /* set by the timer and wake-up stubs */
    .set PC_STACK, 24           /* CPL3 stack top of a secondary core */
    .set PC_TSS, 32             /* this core's TSS */
    .set PC_RSP0, 40            /* this core's CPL0 stack top */
    .set PC_IRQ, 48             /* device interrupts pending: bit n = vector IRQ_BASE + n */
    .set PC_NOTIFY, 56          /* the process unit's "notified" flag of this core, or 0 */
    .set IRQ_BASE, 0x50         /* device vectors: IRQ_BASE .. IRQ_BASE + 31 */
    .set TSS_STRIDE, 128
    .set CPL0_STACK_SIZE, 8192
    .set IST_STACK_SIZE, 4096
    .set GUARD, 4096            /* an unmapped page below each static stack */
    .set CPL0_SLOT, GUARD + CPL0_STACK_SIZE
    .set IST_SLOT, GUARD + IST_STACK_SIZE

    /* From 32-bit protected mode: paging on the link-time tables, long
     * mode, then a far jump to 64-bit `target` (clobbers eax, ecx, edx). */
    .macro ENTER_LONG_MODE target
    movl $0x20, %eax            /* CR4.PAE */
    movl %eax, %cr4
    movl $_torito_boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      /* EFER.LME */
    movl $0x100, %eax
    xorl %edx, %edx
    wrmsr
    movl $0x80010011, %eax      /* CR0: PG | WP | ET | PE */
    movl %eax, %cr0
    ljmp $KCODE, $\target
    .endm

    .macro IDT_ENTRY handler, ist=0
    .word ((\handler - boot_base + BOOT_BASE) & 0xffff)
    .word KCODE
    .byte \ist
    .byte 0x8e                  /* present, DPL0, 64-bit interrupt gate */
    .word (((\handler - boot_base + BOOT_BASE) >> 16) & 0xffff)
    .long 0
    .long 0
    .endm

    .pushsection .boot, "awx"
boot_base:

/* ---- GDT ------------------------------------------------------------- */
    .balign 16
    .globl _torito_gdt
_torito_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff    /* 0x10 kernel data */
    .quad 0x00cff3000000ffff    /* 0x18 user data (DPL3) */
    .quad 0x00affb000000ffff    /* 0x20 user code, 64-bit (DPL3) */
    .quad 0x00cf9b000000ffff    /* 0x28 kernel code, 32-bit (trampoline) */
    .set c, 0                   /* 0x30 + 16 * c: core c's 64-bit TSS, available */
    .rept MAX_CORES
    .word 0x67
    .word ((_torito_tss - boot_base + BOOT_BASE + c * TSS_STRIDE) & 0xffff)
    .byte (((_torito_tss - boot_base + BOOT_BASE + c * TSS_STRIDE) >> 16) & 0xff)
    .byte 0x89
    .byte 0x00
    .byte (((_torito_tss - boot_base + BOOT_BASE + c * TSS_STRIDE) >> 24) & 0xff)
    .long 0
    .long 0
    .set c, c + 1
    .endr
gdt_end:

gdt_ptr:
    .word gdt_end - _torito_gdt - 1
    .quad _torito_gdt
idt_ptr:
    .word idt_end - _torito_idt - 1
    .quad _torito_idt
null_idt_ptr:
    .word 0
    .quad 0

/* ---- TSSs, one per core ---------------------------------------------- */
    .balign 128
    .globl _torito_tss
_torito_tss:
    .set c, 0
    .rept MAX_CORES
    .long 0
    .quad cpl0_stacks + (c + 1) * CPL0_SLOT         /* RSP0: every CPL3 -> CPL0 entry */
    .quad 0, 0
    .quad 0
    .quad ist_stacks + (c + 1) * IST_SLOT           /* IST1: double fault */
    .quad 0, 0, 0, 0, 0, 0
    .quad 0
    .word 0
    .word 104                   /* no I/O permission bitmap */
    .fill TSS_STRIDE - 104, 1, 0
    .set c, c + 1
    .endr

/* ---- Per-core blocks ---------------------------------------------------- */
    .balign 64
    .globl _torito_percpu
_torito_percpu:
    .set c, 0
    .rept MAX_CORES
    .quad c                                         /* PC_ID */
    .quad _torito_percpu + c * PERCPU_STRIDE        /* PC_SELF */
    .quad 0                                         /* PC_WAKE */
    .quad 0                                         /* PC_STACK */
    .quad _torito_tss + c * TSS_STRIDE              /* PC_TSS */
    .quad cpl0_stacks + (c + 1) * CPL0_SLOT         /* PC_RSP0 */
    .quad 0                                         /* PC_IRQ */
    .quad 0                                         /* PC_NOTIFY */
    .set c, c + 1
    .endr
    /* The core an INIT-SIPI start is bringing up (written by core 0). */
    .globl _torito_ap_booting
_torito_ap_booting:
    .long 0

/* ---- IDT ------------------------------------------------------------- */
    .balign 16
    .globl _torito_idt
_torito_idt:
    IDT_ENTRY isr_0
    IDT_ENTRY isr_1
    IDT_ENTRY isr_2
    IDT_ENTRY isr_3
    IDT_ENTRY isr_4
    IDT_ENTRY isr_5
    IDT_ENTRY isr_ud
    IDT_ENTRY isr_7
    IDT_ENTRY isr_8, 1
    IDT_ENTRY isr_9
    IDT_ENTRY isr_10
    IDT_ENTRY isr_11
    IDT_ENTRY isr_12
    IDT_ENTRY isr_13
    IDT_ENTRY isr_14
    IDT_ENTRY isr_15
    IDT_ENTRY isr_16
    IDT_ENTRY isr_17
    IDT_ENTRY isr_18
    IDT_ENTRY isr_19
    IDT_ENTRY isr_20
    IDT_ENTRY isr_21
    IDT_ENTRY isr_22
    IDT_ENTRY isr_23
    IDT_ENTRY isr_24
    IDT_ENTRY isr_25
    IDT_ENTRY isr_26
    IDT_ENTRY isr_27
    IDT_ENTRY isr_28
    IDT_ENTRY isr_29
    IDT_ENTRY isr_30
    IDT_ENTRY isr_31
    .rept 32                    /* 32..63 */
    IDT_ENTRY isr_ignore
    .endr
    IDT_ENTRY isr_wake          /* 64: the LAPIC timer */
    IDT_ENTRY isr_wake          /* 65: a wake-up from another core */
    .rept 14                    /* 66..79 */
    IDT_ENTRY isr_ignore
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    IDT_ENTRY isr_irq_\n       /* 80..111: device interrupts (MSI) */
    .endr
    .rept 144                   /* 112..255 */
    IDT_ENTRY isr_ignore
    .endr
idt_end:

/* ---- 32-bit entries: multiboot1 and PVH -------------------------------
 * Both arrive in 32-bit protected mode with paging off. Enter long mode on
 * the link-time page tables and drop to CPL3 at _torito_generic_entry(kind,
 * info). */
    .code32
    .globl _torito_multiboot_entry
_torito_multiboot_entry:
    movl $2, %edi               /* BootProtocol::Multiboot; eax = magic */
    movl %ebx, %esi             /* multiboot information */
    jmp enter_long_mode

    .globl _torito_pvh_entry
_torito_pvh_entry:
    movl $3, %edi               /* BootProtocol::Pvh */
    movl %ebx, %esi             /* hvm_start_info */

enter_long_mode:
    movl $(cpl0_stacks + CPL0_SLOT), %esp
    lgdt gdt_ptr
    ENTER_LONG_MODE long_mode

    .code64
long_mode:
    movl $KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movb $0xff, %al             /* mask the legacy PICs */
    outb %al, $0xa1
    outb %al, $0x21
    movw $TSS_SEL, %ax
    ltr %ax
    lidt idt_ptr
    movl $GS_BASE_MSR, %ecx     /* core 0's per-core block */
    movl $_torito_percpu, %eax
    xorl %edx, %edx
    wrmsr
    movl %edi, %edi             /* zero-extend kind and info */
    movl %esi, %esi
    pushq $UDATA
    pushq $(boot_stack_top - 8)
    pushq $0x202                /* IF: interrupts reach CPL3 once a source is set up */
    pushq $UCODE
    pushq $_torito_generic_entry
    iretq

/* ---- Secondary cores ----------------------------------------------------
 * _torito_ap_entry is CPL3 code: the Torito monitor starts a secondary
 * vCPU there directly (GS base and TR set per core). It takes the stack
 * core 0 left in the per-core block and calls kernel_ap_main(core). */
    .globl _torito_ap_entry
_torito_ap_entry:
    movq %gs:PC_STACK, %rsp
    movq %gs:PC_ID, %rdi
    call kernel_ap_main
    ud2

/* On other hosts core 0 starts each secondary core with INIT-SIPI: it
 * copies this real-mode trampoline below 1 MiB, sets _torito_ap_booting
 * and sends the SIPI. The trampoline enters protected mode on the kernel's
 * GDT and jumps to ap_pm32, which continues like the 32-bit boot path, sets
 * the core's GS base and TSS, and drops to CPL3 at _torito_ap_entry. */
    .code16
    .globl _torito_ap_trampoline
_torito_ap_trampoline:
    cli
    lgdtl %cs:(ap_trampoline_gdtp - _torito_ap_trampoline)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $KCODE32, $ap_pm32
    .balign 4
ap_trampoline_gdtp:
    .word gdt_end - _torito_gdt - 1
    .long _torito_gdt
    .globl _torito_ap_trampoline_end
_torito_ap_trampoline_end:

    .code32
ap_pm32:
    movl $KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl _torito_ap_booting, %ebx
    shll $6, %ebx               /* * PERCPU_STRIDE */
    addl $_torito_percpu, %ebx
    movl PC_RSP0(%ebx), %esp
    ENTER_LONG_MODE ap_long_mode

    .code64
ap_long_mode:
    movl $KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $GS_BASE_MSR, %ecx
    movl %ebx, %eax
    xorl %edx, %edx
    wrmsr
    movq %gs:PC_ID, %rax
    shlq $4, %rax
    addq $TSS_SEL, %rax
    ltr %ax
    lidt idt_ptr
    pushq $UDATA
    pushq %gs:PC_STACK
    pushq $0x202
    pushq $UCODE
    pushq $_torito_ap_entry
    iretq

/* ---- #UD: the CPL3 -> CPL0 gate -----------------------------------------
 * A gate call is `ud2` with r10d = GATE_MAGIC and eax = operation; other
 * registers carry arguments (see kernel/src/arch/gate.rs). Anything else
 * that raises #UD is a real invalid opcode and goes to the fault path. */
isr_ud:
    cmpl $GATE_MAGIC, %r10d
    jne 1f
    cmpl $GATE_OPS, %eax
    jae 1f
    jmp *gate_table(,%rax,8)
1:  pushq $0
    pushq $6
    jmp fault_common

gate_done:
    addq $2, (%rsp)             /* skip the ud2 */
    iretq

gate_outb:                      /* outb(dx = port, edi = value) */
    movl %edi, %eax
    outb %al, %dx
    jmp gate_done
gate_outl:                      /* outl(dx = port, edi = value) */
    movl %edi, %eax
    outl %eax, %dx
    jmp gate_done
gate_outsb:                     /* outsb(dx = port, rsi = buf, rcx = len) */
    rep outsb
    jmp gate_done
gate_inb:                       /* eax = inb(dx = port) */
    xorl %eax, %eax
    inb %dx, %al
    jmp gate_done
gate_invlpg:                    /* invlpg(rdi = address) */
    invlpg (%rdi)
    jmp gate_done
gate_idle:                      /* halt until an interrupt, unless a wake-up is pending */
    cmpl $0, %gs:PC_WAKE
    jne gate_done
    sti                         /* the interrupt shadow of sti covers hlt: */
    hlt                         /* no wake-up is lost between check and halt */
    cli
    jmp gate_done
gate_inl:                       /* eax = inl(dx = port) */
    inl %dx, %eax
    jmp gate_done
gate_wrmsr:                     /* wrmsr(ecx = MSR, rdi = value) */
    movl %edi, %eax
    movq %rdi, %rdx
    shrq $32, %rdx
    wrmsr
    jmp gate_done
gate_reset:                     /* triple fault: the last resort to stop */
    lidt null_idt_ptr
    ud2

    .balign 8
gate_table:
    .quad gate_outb             /* 0 */
    .quad gate_outl             /* 1 */
    .quad gate_outsb            /* 2 */
    .quad gate_inb              /* 3 */
    .quad gate_invlpg           /* 4 */
    .quad gate_reset            /* 5 */
    .quad gate_idle             /* 6 */
    .quad gate_wrmsr            /* 7 */
    .quad gate_inl              /* 8 */

/* ---- Faults -------------------------------------------------------------
 * Record the frame in _torito_fault_info and return to CPL3 at
 * _torito_fault_upcall on its own stack, where Rust code reports and exits.
 * A fault while one is being handled stops the machine from here. */
    .irp v, 0,2,4,5,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
isr_\v:
    pushq $0
    pushq $\v
    jmp fault_common
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
isr_\v:
    pushq $\v
    jmp fault_common
    .endr

/* ---- #DB and #BP: to the debugger when one is attached ------------------
 * The Torito monitor serving gdb sets _torito_debugger. The stub saves the
 * registers under the CPU's frame (torito_abi::mmio::DebugFrame), hands
 * the frame's address to the monitor in one write, which stops this vCPU
 * until gdb resumes it, and returns with the registers as gdb left them
 * (gdb's single step sets TF in the saved flags). Without a debugger both
 * are faults like any other. */
    .irp v, 1,3
isr_\v:
    cmpb $0, _torito_debugger
    je 1f
    pushq $\v
    jmp debug_trap
1:  pushq $0
    pushq $\v
    jmp fault_common
    .endr

debug_trap:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movabsq $DEBUG_TRAP, %rax
    movq %rsp, (%rax)           /* stops here until the debugger resumes */
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $8, %rsp               /* the vector */
    iretq

    .globl _torito_debugger
_torito_debugger:
    .byte 0

isr_ignore:                     /* other vectors: nothing is routed there */
    iretq

isr_wake:                       /* timer or wake-up: record it, end the interrupt */
    movl $1, %gs:PC_WAKE
    pushq %rax
    movabsq $LAPIC_EOI, %rax
    movl $0, (%rax)
    popq %rax
    iretq

/* Device interrupt: mark it pending on this core, wake the core (the idle
 * gate's flag and the process unit's notification), end the interrupt. */
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
isr_irq_\n:
    lock btsl $\n, %gs:PC_IRQ
    jmp irq_common
    .endr

irq_common:
    movl $1, %gs:PC_WAKE
    pushq %rax
    movq %gs:PC_NOTIFY, %rax
    testq %rax, %rax
    jz 1f
    movb $1, (%rax)
1:  movabsq $LAPIC_EOI, %rax
    movl $0, (%rax)
    popq %rax
    iretq

fault_common:
    lock btsq $0, _torito_fault_active  /* first fault of any core wins */
    jc die
    popq _torito_fault_info+0   /* vector */
    popq _torito_fault_info+8   /* error code */
    popq _torito_fault_info+16  /* rip */
    popq _torito_fault_info+24  /* cs */
    popq _torito_fault_info+32  /* rflags */
    popq _torito_fault_info+40  /* rsp */
    popq _torito_fault_info+48  /* ss */
    movq %cr2, %rax
    movq %rax, _torito_fault_info+56
    movq %gs:PC_TSS, %rax       /* a broken RSP0 must not break the report */
    movq %gs:PC_RSP0, %rcx
    movq %rcx, 4(%rax)
    pushq $UDATA
    pushq $(fault_stack_top - 8)
    pushq $0x202
    pushq $UCODE
    pushq $_torito_fault_upcall
    iretq

die:                            /* exit code 255 on every host we know */
    movl $0xf4, %edx
    movl $255, %eax
    outl %eax, %dx              /* QEMU isa-debug-exit, Torito monitor */
    movb $0xfe, %al
    outb %al, $0x64             /* i8042 reset: Firecracker */
    lidt null_idt_ptr
    ud2                         /* triple fault */

    .popsection

/* ---- Notes ------------------------------------------------------------ */
    .pushsection .note.Xen, "a"
    .balign 4
    .long 4                     /* namesz */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad _torito_pvh_entry
    .popsection

    .pushsection .note.torito, "a"
    .balign 4
    .long 7                     /* namesz: "Torito\0" */
    .long 112                   /* descsz: size_of::<KernelNote>() */
    .long 0x54300001            /* torito_abi::note::NOTE_TYPE */
    .asciz "Torito"
    .balign 4
    .long 6                     /* abi_version (torito_abi::ABI_VERSION) */
    .long 0                     /* flags */
    .quad kernel_main           /* entry */
    .quad boot_stack_top        /* stack_top */
    .quad _torito_gdt           /* gdt_base */
    .quad _torito_idt           /* idt_base */
    .quad _torito_tss           /* tss_base */
    .word gdt_end - _torito_gdt - 1
    .word idt_end - _torito_idt - 1
    .word 0x67                  /* tss_limit */
    .word TSS_SEL
    .word UCODE
    .word UDATA
    .long _torito_boot_pml4     /* boot_tables: the segment of the link-time tables */
    .quad __bss_end             /* image_end */
    .quad _torito_ap_entry      /* ap_entry */
    .quad _torito_percpu        /* percpu_base */
    .long PERCPU_STRIDE
    .word MAX_CORES
    .word TSS_STRIDE
    .quad _torito_stack_guards  /* stack_guards (ABI v5) */
    .long 2 + 2 * MAX_CORES     /* stack_guard_count */
    .long 0
    .popsection

/* The guard pages: boot stack, fault stack, then each core's CPL0 and
 * double-fault stacks (kernel/src/arch/stacks.rs reads the same order). */
    .pushsection .rodata.torito_stack_guards, "a"
    .balign 8
    .globl _torito_stack_guards
_torito_stack_guards:
    .quad _torito_boot_stack_guard
    .quad _torito_fault_stack_guard
    .set c, 0
    .rept MAX_CORES
    .quad cpl0_stacks + c * CPL0_SLOT
    .quad ist_stacks + c * IST_SLOT
    .set c, c + 1
    .endr
    .popsection

/* ---- Boot page tables: identity map of [0, 4 GiB), user pages ----------
 * Only the 32-bit entries use them; the linker script puts them in a
 * segment of their own, which the Torito monitor does not load. */
    .pushsection .torito_boot_tables, "aw"
    .balign 4096
    .globl _torito_boot_pml4
_torito_boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x7
    .quad boot_pd + 0x1000 + 0x7
    .quad boot_pd + 0x2000 + 0x7
    .quad boot_pd + 0x3000 + 0x7
    .fill 508, 8, 0
boot_pd:                        /* 2 MiB pages, P | W | U | PS */
    .quad boot_pt0 + 0x7
    .set i, 1
    .rept 2047
    .quad (i << 21) | 0x87
    .set i, i + 1
    .endr
    .globl _torito_boot_pt0
_torito_boot_pt0:               /* first 2 MiB in 4 KiB pages; page 0 is mapped */
boot_pt0:                       /* until the loader's data is read, see unmap_null_page */
    .quad 0x7
    .set i, 1
    .rept 511
    .quad (i << 12) | 0x7
    .set i, i + 1
    .endr
    .popsection

/* ---- Stacks and fault record ------------------------------------------- */
/* Each stack has a guard page below it, listed in _torito_stack_guards
 * for the note: the monitor (or the kernel, on other hosts) leaves it
 * unmapped, so running past the bottom faults instead of overwriting the
 * stack below. */
    .pushsection .bss.torito_stacks, "aw", @nobits
    .balign 4096
    .globl _torito_cpl0_stacks
_torito_cpl0_stacks:
cpl0_stacks:                    /* per core: guard page, stack */
    .skip CPL0_SLOT * MAX_CORES
    .globl _torito_ist_stacks
_torito_ist_stacks:
ist_stacks:
    .skip IST_SLOT * MAX_CORES
    .globl _torito_fault_stack_guard
_torito_fault_stack_guard:
    .skip GUARD
    .skip 32768                 /* the fault report's (one fault at a time) */
fault_stack_top:
    .globl _torito_boot_stack_guard
_torito_boot_stack_guard:
    .skip GUARD
    .skip 131072
    .globl boot_stack_top
boot_stack_top:
    .balign 8
    .globl _torito_fault_info
_torito_fault_info:
    .skip 64
    .globl _torito_fault_active
_torito_fault_active:
    .skip 8
    .popsection
