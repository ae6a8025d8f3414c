/*
 * stockade-rawcall: make one raw system call and report it in the exit
 * status, with no C library: the only system calls this program makes are
 * the execve that starts it, the call it is asked for, and exit_group.
 * `stockade fuzz --live` runs it in jails whose seccomp filter is a mutant
 * profile's, which may deny nearly everything else.
 *
 *   stockade-rawcall [--x32|--int80] NR [ARG...]      (numbers in hex, no 0x)
 *
 * Exit status: 0 when the call returned a non-error value, else the errno
 * modulo 256 (1..255; an errno that is a multiple of 256 shows as 255).
 * A seccomp kill or trap shows as death by SIGSYS; a filter that refuses
 * both exit_group and exit, as death by SIGILL.
 *
 * Built with -static -nostdlib -ffreestanding (see the Makefile).
 */

/* Reads a hexadecimal number; stops at the first other character. */
static unsigned long hex(const char *s) {
    unsigned long v = 0;
    for (; *s; s++) {
        char c = *s;
        if (c >= '0' && c <= '9') v = v * 16 + (unsigned long)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (unsigned long)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v = v * 16 + (unsigned long)(c - 'A' + 10);
        else break;
    }
    return v;
}

/* The 64-bit system-call instruction with six arguments. */
static long call64(long nr, const long a[6]) {
    long ret;
    register long r10 __asm__("r10") = a[3];
    register long r8 __asm__("r8") = a[4];
    register long r9 __asm__("r9") = a[5];
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* The i386 gate, int 0x80: the kernel reads the call as AUDIT_ARCH_I386. */
static long call32(long nr, const long a[6]) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a[0]), "c"(a[1]), "d"(a[2]), "S"(a[3]), "D"(a[4])
                     : "memory");
    return ret;
}

static int streq(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

/* Called from _start with the initial stack: argc, then argv. */
__attribute__((noreturn, used)) void rawcall_main(long *stack) {
    long argc = stack[0];
    char **argv = (char **)(stack + 1);
    int i = 1, mode = 0;
    if (i < argc && streq(argv[i], "--x32")) { mode = 1; i++; }
    else if (i < argc && streq(argv[i], "--int80")) { mode = 2; i++; }
    long nr = i < argc ? (long)hex(argv[i++]) : -1;
    long a[6] = {0, 0, 0, 0, 0, 0};
    for (int k = 0; k < 6 && i < argc; k++, i++) a[k] = (long)hex(argv[i]);
    long r = mode == 2 ? call32(nr, a) : call64(mode == 1 ? (nr | 0x40000000L) : nr, a);
    long status = 0;
    if (r < 0 && r > -4096) {
        status = (-r) & 0xff;
        if (status == 0) status = 255;
    }
    const long none[6] = {status, 0, 0, 0, 0, 0};
    call64(231 /* exit_group */, none);
    /* exit_group refused by the filter: exit, then die by SIGILL rather
     * than run on (the jail must end either way). */
    call64(60 /* exit */, none);
    __builtin_trap();
}

/* The entry point: hand the stack pointer to rawcall_main (16-byte aligned). */
__asm__(".globl _start\n"
        "_start:\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call rawcall_main\n");
